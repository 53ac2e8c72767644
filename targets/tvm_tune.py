"""Schedules for TVM builds: default loop schedules when untuned, MetaSchedule when asked.

Untuned, TVM 0.27's CPU pipeline leaves every kernel as the loop nest its operator legalization
wrote: one thread, no vectors, matmuls with the reduction innermost. SigLIP-B/16 (224 px, batch
1) then takes ~84 s per image here; ONNX Runtime takes ~0.14 s. TVM's GPU pipeline schedules each
kernel with DLight rules instead; `pipeline` does the same on CPUs (0.7 s for SigLIP-B/16 on the
same 2 cores), trying TVM's DLight CPU GEMV rule, then ours, then TVM's CPU Reduction rule
(softmax, norms), then a catch-all:

- `SpatialReduce`: a kernel with one reduction block whose iterations are spatial then reduction
  (`S+R+`: matmul, conv, pooling) and whose last spatial var j indexes the innermost dim of an
  input (B[k, j]). j is split into vector-width chunks V that go *inside* the reduction, so each
  step is a broadcast-multiply-add of one vector: jo | rows | k | ji (ji vectorized), jo and the
  rows fused in parallel, so a thread keeps a B column chunk in cache while it walks the rows.
  When that chunk (K x V) outgrows L1, K is blocked as well and 4 (or 3, 2) rows share each
  B vector load: jo | ko | rows/4 | ki | row%4 (unrolled) | ji, jo in parallel. The init is split
  off the reduction; fused epilogue blocks get the catch-all schedule.
- `Injective` (everything else): per top-level block, the leading spatial loops fused and in
  parallel and the innermost loop vectorized when its length is a multiple of (or at most) V.

A rule that does not match returns None and leaves the kernel as it was, which is correct, only
slow. `default_schedules=False` turns the CPU rules off (TVM's own CPU pipeline).

Tuning runs MetaSchedule's Relax integration on this machine (`tune_relax` over the module
legalized and fused as `pipeline` does it); the build then applies the database
(`MetaScheduleApplyDatabase`) and gives the kernels it does not cover the default schedules.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from compiler.errors import MissingDependencyError

_ROWS = (4, 3, 2)  # output rows computed together in the matmul inner kernel
_KBLOCKS = (256, 192, 128)  # K blocks: 256 x 16 floats = 16 KB of B per chunk, inside L1

__all__ = ["apply_database", "check_ir_json", "cpu_rules", "ir_json_works", "pipeline", "tune"]


@functools.lru_cache(maxsize=1)
def cpu_rules() -> tuple[Any, ...]:
    """DLight rules for LLVM targets, first match wins: TVM's CPU GEMV, our SpatialReduce,
    TVM's CPU Reduction, our Injective."""
    from tvm import s_tir
    from tvm.s_tir import dlight as dl
    from tvm.s_tir.dlight.analysis import normalize_prim_func
    from tvm.s_tir.dlight.cpu.base import CPUScheduleRule
    from tvm.target.codegen import llvm_get_vector_width
    from tvm.tirx import ForKind
    from tvm.tirx.analysis import undefined_vars

    def lanes(target: Any, block: Any, sch: Any) -> int:
        bits = llvm_get_vector_width(target)
        writes = sch.get(block).writes
        dtype_bits = writes[0].source.dtype.bits if writes else 32
        return max((bits if bits > 0 else 128) // max(dtype_bits, 8), 1)

    def extent(sch: Any, loop: Any) -> int | None:
        value = sch.get(loop).extent
        return int(value.value) if hasattr(value, "value") else None

    def streams_last_axis(sch: Any, block: Any, axis: int) -> bool:
        """Whether iteration var `axis` indexes the innermost dim of an input (as j does in
        B[k, j]), so vector chunks of it are contiguous loads."""
        stmt = sch.get(block)
        var = stmt.iter_vars[axis].var
        outs = [w.source for w in stmt.writes]
        for read in stmt.reads:
            if any(read.source.same_as(o) for o in outs) or not read.region:
                continue
            if any(v.same_as(var) for v in undefined_vars(read.region[-1].min)):
                return True
        return False

    def touches_bool(sch: Any, block: Any) -> bool:
        """LLVM codegen cannot store vectors into bool buffers (it sees int8 lanes)."""
        stmt = sch.get(block)
        return any(str(getattr(r.source, "dtype", "")) == "bool"
                   for r in [*stmt.reads, *stmt.writes])

    def injective(sch: Any, info: Any, target: Any) -> None:
        """Fuse and parallelize the leading spatial loops; vectorize an injective block's
        innermost loop when its length is a multiple of (or at most) the vector width."""
        kinds = info.dom_kind()
        loops = [it.loop_rv for it in info.iters]
        par = loops[:len(kinds) - len(kinds.lstrip("S"))]
        if not par:
            return
        if info.is_injective() and not touches_bool(sch, info.block_rv):
            width, n = lanes(target, info.block_rv, sch), extent(sch, loops[-1])
            if n is not None and width >= 2 and n >= 2 and (n <= width or n % width == 0):
                if n <= width:
                    vec, par = loops[-1], loops[:-1]
                else:
                    outer, vec = sch.split(loops[-1], [None, width])
                    par = loops[:-1] + [outer]
                sch.vectorize(vec)
        if par:
            sch.parallel(sch.fuse(*par) if len(par) > 1 else par[0])

    class Injective(CPUScheduleRule):
        """Catch-all: parallel leading spatial loops, vectorized innermost loop, per block."""

        def apply(self, func: Any, target: Any, _tunable: bool) -> Any:
            if not self.is_target_available(target):
                return None
            try:
                sch = s_tir.Schedule(func)
                infos = normalize_prim_func(sch)
                if not infos:
                    return None
                for info in infos:
                    injective(sch, info, target)
                return sch
            except s_tir.ScheduleError:
                return None

    class SpatialReduce(CPUScheduleRule):
        """Matmul-like `S+R+` kernels (see the module docstring)."""

        def apply(self, func: Any, target: Any, _tunable: bool) -> Any:
            if not self.is_target_available(target):
                return None
            try:
                return self._apply(s_tir.Schedule(func), target)
            except s_tir.ScheduleError:
                return None

        def _apply(self, sch: Any, target: Any) -> Any:
            infos = normalize_prim_func(sch)
            if not infos:
                return None
            main = [i for i in infos if not i.is_injective()]
            if len(main) != 1 or not re.fullmatch(r"S+R+", main[0].dom_kind()):
                return None
            info = main[0]
            n_s = len(info.dom_kind()) - len(info.dom_kind().lstrip("S"))
            if not streams_last_axis(sch, info.block_rv, n_s - 1):
                return None  # e.g. a norm reducing each row: DLight's Reduction rule fits
            loops = [it.loop_rv for it in info.iters]
            outer, last, reds = loops[:n_s - 1], loops[n_s - 1], loops[n_s:]
            width = lanes(target, info.block_rv, sch)
            n_last = extent(sch, last)
            if n_last is not None and width >= 2 and n_last >= width and n_last % width == 0:
                # jo | outer | reds | ji: a thread keeps one B column chunk hot in cache
                # while it walks the rows
                jo, ji = sch.split(last, [None, width])
                n_red = extent(sch, reds[0]) if len(reds) == 1 else None
                kb = next((b for b in _KBLOCKS if n_red and n_red > b and n_red % b == 0), 0)
                if kb and n_last // width >= 16:
                    # a B chunk of K x width floats outgrows L1: block K as well
                    ko, ki = sch.split(reds[0], [None, kb])
                    rows = extent(sch, outer[-1]) if outer else None
                    block = next((r for r in _ROWS if rows and rows % r == 0 and rows > r), 0)
                    if block:
                        # `block` rows per step reuse each B vector load (register blocking)
                        io, ii = sch.split(outer[-1], [None, block])
                        sch.reorder(jo, ko, *outer[:-1], io, ki, ii, ji)
                        sch.unroll(ii)
                    else:
                        sch.reorder(jo, ko, *outer, ki, ji)
                    par, inner, reds = [jo], ji, [ko, ki]
                else:
                    sch.reorder(jo, *outer, *reds, ji)
                    par, inner = [jo, *outer], ji
            elif outer:  # outer | reds | j: j contiguous innermost, for LLVM's vectorizer
                sch.reorder(*outer, *reds, last)
                par, inner = outer, None
            else:  # a single spatial axis: keep it outermost, in parallel
                par, inner = [last], None
            sch.parallel(sch.fuse(*par) if len(par) > 1 else par[0])
            if inner is not None:  # before decompose: vectorize wants a whole reduction block
                sch.vectorize(inner)
            init = sch.decompose_reduction(info.block_rv, reds[0])
            if inner is not None and sch.get(sch.get_loops(init)[-1]).kind != ForKind.VECTORIZED:
                sch.vectorize(sch.get_loops(init)[-1])
            for other in infos:
                if other is not info:
                    injective(sch, other, target)
            return sch

    return (dl.cpu.GEMV(), SpatialReduce(), dl.cpu.Reduction(), Injective())


def _fuse_passes(target: Any) -> list[Any]:
    from tvm import relax

    return [*relax.pipeline.library_dispatch_passes(target),
            relax.transform.LegalizeOps(), relax.transform.AnnotateTIROpPattern(),
            relax.transform.FoldConstant(), relax.transform.FuseOps(), relax.transform.FuseTIR()]


def _rules(target: Any, default_schedules: bool) -> list[Any]:
    from tvm.s_tir import dlight as dl

    if "gpu" in target.keys:  # what TVM's own CUDA pipeline applies; kernels need them
        return [dl.gpu.Matmul(), dl.gpu.GEMV(), dl.gpu.Reduction(), dl.gpu.GeneralReduction(),
                dl.gpu.Fallback()]
    return list(cpu_rules()) if default_schedules else []


def pipeline(target: Any, default_schedules: bool = True, database: bool = False) -> Any:
    """The Relax build pipeline: dispatch, legalize, fuse, [apply the current MetaSchedule
    database], default schedules for what is left, lower. Without a database or CPU schedules
    it is TVM's default pipeline for the target."""
    import tvm
    from tvm import relax
    from tvm.s_tir import dlight as dl

    @tvm.transform.module_pass(opt_level=0, name="EdgecRelaxPipeline")
    def _pipeline(mod: Any, _ctx: Any) -> Any:
        passes = _fuse_passes(target)
        if database:
            passes.append(relax.transform.MetaScheduleApplyDatabase())
        rules = _rules(target, default_schedules)
        if rules:
            passes.append(dl.ApplyDefaultSchedule(*rules))
        # relax.pipeline.dataflow_lower_passes(target) is these four for every target, but
        # 0.27 fails to export it from the cpu_generic and cuda backends (AttributeError)
        passes += [relax.transform.RewriteDataflowReshape(), relax.transform.ToNonDataflow(),
                   relax.transform.RemovePurityChecking(), relax.transform.CallTIRRewrite()]
        passes += relax.pipeline.finalize_passes(target)
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


# -- MetaSchedule ----------------------------------------------------------------------------

_PROBE = "import tvm; tvm.ir.load_json(tvm.ir.save_json(tvm.tirx.const(1, 'int32')))"


@functools.lru_cache(maxsize=1)
def ir_json_works() -> bool:
    """Whether TVM IR round-trips through JSON here (MetaSchedule's database needs it).

    apache-tvm-ffi 0.1.15.post2 segfaults in `ToJSONGraph` under apache-tvm 0.27.0.post1
    (0.1.14.post1 works), so this runs in a child process rather than crash the caller.
    """
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def check_ir_json() -> None:
    """Raise `MissingDependencyError` when MetaSchedule's database would crash this process."""
    if ir_json_works():
        return
    from importlib import metadata

    try:
        ffi = metadata.version("apache-tvm-ffi")
    except metadata.PackageNotFoundError:
        ffi = "unknown"
    raise MissingDependencyError(
        f"a working apache-tvm-ffi (installed: {ffi}, which crashes serializing TVM IR, "
        "as MetaSchedule's database must; 0.1.14.post1 works with apache-tvm 0.27)",
        "tvm", "to tune with MetaSchedule")


def _ms_build(mod: Any, target: Any, _params: Any) -> Any:
    """MetaSchedule's default candidate build, minus its `import tvm.s_tir.tensor_intrin`
    (25 s in every fresh builder process; the candidates arrive already scheduled)."""
    from tvm.driver import build as tvm_build
    from tvm.s_tir.transform import RemoveWeightLayoutRewriteBlock

    mod = RemoveWeightLayoutRewriteBlock(skip_tensor_rewrite=True)(mod)
    return tvm_build(mod, target=target)


def _fused(mod: Any, target: Any) -> Any:
    """`mod` legalized and fused as `pipeline` does it, so that the tuning tasks' workloads
    are the ones `MetaScheduleApplyDatabase` later looks up."""
    import tvm

    with target:
        return tvm.transform.Sequential(_fuse_passes(target))(mod)


def _compile_with(db: Any, mod: Any, target: Any, default_schedules: bool) -> Any:
    import tvm

    with target, db, tvm.transform.PassContext(opt_level=3):
        return tvm.compile(mod, target=target,
                           relax_pipeline=pipeline(target, default_schedules, database=True))


def apply_database(mod: Any, target: Any, cache: str,
                   default_schedules: bool = True) -> tuple[Any, dict[str, Any]]:
    """Compile `mod` with the MetaSchedule JSON database in `cache`."""
    from tvm.s_tir import meta_schedule as ms

    check_ir_json()
    db = ms.database.JSONDatabase(work_dir=cache, allow_missing=False)
    ex = _compile_with(db, mod, target, default_schedules)
    return ex, {"trials": 0, "database": os.path.abspath(cache), "records": len(db),
                "default_schedules": default_schedules}


def tune(mod: Any, target: Any, trials: int, cores: int, cache: str | None,
         default_schedules: bool = True) -> tuple[Any, dict[str, Any]]:
    """Tune `mod` for `trials` candidates measured here, then compile with the result."""
    from tvm.s_tir import meta_schedule as ms

    check_ir_json()
    cost_model = "xgb" if importlib.util.find_spec("xgboost") else "random"
    work_dir = cache or tempfile.mkdtemp(prefix="edgec-tvm-tune-")
    os.makedirs(work_dir, exist_ok=True)
    t0 = time.perf_counter()
    try:
        db = ms.relax_integration.tune_relax(
            _fused(mod, target), {}, target, work_dir, trials,
            num_trials_per_iter=min(64, trials),
            builder=ms.builder.LocalBuilder(max_workers=cores, f_build=_ms_build),
            runner=ms.runner.LocalRunner(), cost_model=cost_model, seed=0)
        ex = _compile_with(db, mod, target, default_schedules)
        records = len(db)
    finally:
        if not cache:
            shutil.rmtree(work_dir, ignore_errors=True)
    return ex, {"trials": trials, "cost_model": cost_model, "records": records,
                "database": os.path.abspath(cache) if cache else None,
                "default_schedules": default_schedules,
                "seconds": round(time.perf_counter() - t0, 3)}
