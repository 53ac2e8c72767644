"""Building an emitted TVM bundle: ONNX -> Relax -> (MetaSchedule) -> `model.so` (+ CUDA cubin).

`build` reads what `TvmBackend.emit` wrote (`model.onnx`, `tvm_target.json`), imports the model
with the Relax ONNX frontend (weights become constants, `BuildConfig.shapes` bind dynamic dims),
decomposes training-style ops for inference, compiles, exports one shared library and writes
`tvm_build.json` (inputs, outputs, target, tuning, CUDA kernel files, timings), which the runner
and `run_tvm.py` read.

Kernels get default schedules (`targets.tvm_tune.pipeline`: DLight on GPUs, edgec's DLight-style
CPU rules on CPUs) unless a MetaSchedule database covers them. MetaSchedule measures candidates
on this machine, so it tunes host builds only; a database tuned elsewhere (the `tuning_cache`
folder) is applied to any target.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from typing import Any

from compiler.errors import ConstraintError, UnsupportedOpError
from targets.base import BuildConfig
from targets.tvm_common import (
    BUILD_FILE,
    LIBRARY,
    TARGET_FILE,
    MissingToolchainError,
    TvmRunner,
    import_tvm,
    is_native,
    target_triple,
    tvm_target,
)

__all__ = ["build", "RUN_SCRIPT"]

_DB_FILES = ("database_workload.json", "database_tuning_record.json")


def build(out_dir: str, profile: Any, config: BuildConfig) -> list[str]:
    """Compile the emitted bundle in `out_dir`; returns the files it added."""
    import onnx

    tvm = import_tvm()

    with open(os.path.join(out_dir, TARGET_FILE)) as f:
        spec = json.load(f)
    t0 = time.perf_counter()
    model = onnx.load(os.path.join(out_dir, "model.onnx"))
    inputs = _inputs(model, config.shapes)
    mod = _relax_module(model, inputs)
    t_import = time.perf_counter() - t0
    symbolic = [i["name"] for i in inputs if not _static(i["shape"])]

    target_dict = dict(spec["target"])
    trials = int(config.option("tune_trials", 0) or 0)
    t1 = time.perf_counter()
    ex, tuning = _compile(tvm, mod, target_dict, profile, config, trials, symbolic)
    t_compile = time.perf_counter() - t1

    t2 = time.perf_counter()
    files = [LIBRARY]
    _export(tvm, ex, os.path.join(out_dir, LIBRARY), spec["triple"])
    cuda = None
    if target_dict["kind"] == "cuda":
        cuda = _cuda_kernels(tvm, ex, target_dict, out_dir, config)
        files += [cuda["source"]] + ([cuda["cubin"]] if cuda.get("cubin") else [])
    t_export = time.perf_counter() - t2

    info = {
        "tvm": str(tvm.__version__),
        "target": target_dict,
        "triple": spec["triple"],
        "inputs": inputs,
        "outputs": [o.name for o in model.graph.output],
        "symbolic_inputs": symbolic,
        "params": "embedded constants (keep_params_in_input=False)",
        "tuning": tuning,
        "cuda": cuda,
        "seconds": {"import": round(t_import, 3), "compile": round(t_compile, 3),
                    "export": round(t_export, 3)},
    }
    with open(os.path.join(out_dir, BUILD_FILE), "w") as f:
        json.dump(info, f, indent=2)
    return files + [BUILD_FILE]


def host_library(model: Any, shapes: dict[str, Any], path: str) -> None:
    """Compile `model` for this CPU as `build` does for the host (same import, pipeline and
    default schedules, no tuning) into the shared library `path`. The cost-model calibration
    harness measures these, so the fitted TVM numbers are the backend's, not a bare pipeline's."""
    tvm = import_tvm()

    from targets.devices import get_profile

    host = get_profile("host")
    mod = _relax_module(model, _inputs(model, shapes))
    ex, _ = _compile(tvm, mod, tvm_target(host), host, BuildConfig(), 0, [])
    ex.export_library(path)


def host_proxy(bundle_dir: str) -> Any:
    """A `TvmRunner` for the bundle's model.onnx rebuilt for this machine's CPU, in a temporary
    folder removed with the runner (the bundle itself is left untouched)."""
    import weakref
    from types import SimpleNamespace

    with open(os.path.join(bundle_dir, BUILD_FILE)) as f:
        info = json.load(f)
    tmp = tempfile.mkdtemp(prefix="edgec-tvm-proxy-")
    try:
        for name in ("model.onnx", "model.onnx.data"):
            if os.path.exists(os.path.join(bundle_dir, name)):
                os.symlink(os.path.abspath(os.path.join(bundle_dir, name)),
                           os.path.join(tmp, name))
        target = _host_llvm()
        with open(os.path.join(tmp, TARGET_FILE), "w") as f:
            json.dump({"profile": "host", "target": target, "triple": target_triple(target)}, f)
        shapes = {i["name"]: tuple(i["shape"]) for i in info["inputs"] if _static(i["shape"])}
        default = (info.get("tuning") or {}).get("default_schedules", True)
        host = SimpleNamespace(name="host", is_host=True, compute_units=())
        build(tmp, host, BuildConfig(shapes=shapes, options={"default_schedules": default}))
        runner = TvmRunner(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    weakref.finalize(runner, shutil.rmtree, tmp, True)
    return runner


def _host_llvm() -> dict[str, Any]:
    try:
        from compiler.cpuinfo import cpu_info
        from targets.host import llvm_target

        info = cpu_info()
        return {"kind": "llvm", **llvm_target(tuple(info["isa"]), info["machine"])}
    except Exception:  # the host module cannot tell: LLVM's default for this machine
        return {"kind": "llvm"}


# -- import ----------------------------------------------------------------------------------

def _relax_module(model: Any, inputs: list[dict[str, Any]]) -> Any:
    """The Relax module `build` compiles: the ONNX import, with inference-time decompositions
    (BatchNorm and friends) applied."""
    from tvm import relax

    return relax.transform.DecomposeOpsForInference()(_import(model, inputs))


def _inputs(model: Any, shapes: dict[str, Any]) -> list[dict[str, Any]]:
    """Graph inputs (initializers excluded) with `shapes` bound: name, shape, numpy dtype."""
    import onnx

    inits = {t.name for t in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        dims: list[Any] | None = [
            d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in tt.shape.dim] if tt.HasField("shape") else None  # None: unknown rank
        if vi.name in shapes:
            bound = [int(d) for d in shapes[vi.name]]
            if dims is not None and (len(bound) != len(dims) or any(
                    isinstance(d, int) and d != b for d, b in zip(dims, bound))):
                raise ConstraintError(
                    f"shapes binds input {vi.name!r} to {bound}, which does not fit the "
                    f"model's {dims}")
            dims = bound
        dtype = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type)
        out.append({"name": vi.name, "shape": dims, "dtype": str(dtype)})
    return out


def _static(shape: list[Any] | None) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def _import(model: Any, inputs: list[dict[str, Any]]) -> Any:
    """Relax module for `model`. TVM's frontend cannot follow shape arithmetic on dynamic dims
    (Shape -> ConstantOfShape/Tile, as exporters write for attention and position ids); when
    every input shape is static, the graph is first simplified with onnxsim at those shapes,
    which folds that arithmetic to constants. The bundle's model.onnx stays as emitted."""
    try:
        return _from_onnx(model, inputs)
    except UnsupportedOpError:
        if not all(_static(i["shape"]) for i in inputs):
            raise
        import onnxsim

        fixed, ok = onnxsim.simplify(
            model, overwrite_input_shapes={i["name"]: i["shape"] for i in inputs})
        if not ok:
            raise
        return _from_onnx(fixed, inputs)


def _from_onnx(model: Any, inputs: list[dict[str, Any]]) -> Any:
    import io

    from tvm.relax.frontend.onnx import from_onnx

    shape_dict = {i["name"]: i["shape"] for i in inputs if _static(i["shape"])}
    said = io.StringIO()  # the frontend prints "Error converting operator X" before raising
    try:
        with _quiet_warnings(), contextlib.redirect_stdout(said):
            return from_onnx(model, shape_dict=shape_dict or None, keep_params_in_input=False)
    except Exception as e:  # the frontend raises bare ValueError/TVMError/AssertionError
        op = re.search(r"Error converting operator (\w+)", said.getvalue())
        where = f" (at a {op.group(1)} node)" if op else ""
        raise UnsupportedOpError(
            f"TVM's Relax ONNX frontend could not import the model{where}: "
            f"{str(e).strip().splitlines()[0]}; bind dynamic dims (shapes=...) and run the "
            "'onnxsim' pipeline so shape computations fold to constants, or use another "
            "backend") from e


@contextlib.contextmanager
def _quiet_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# -- compile ---------------------------------------------------------------------------------

def _compile(tvm: Any, mod: Any, target_dict: dict[str, Any], profile: Any,
             config: BuildConfig, trials: int, symbolic: list[str]) -> tuple[Any, dict]:
    from targets import tvm_tune

    cache = config.option("tuning_cache")
    default = bool(config.option("default_schedules", True))
    if trials > 0:
        if not getattr(profile, "is_host", False):
            raise ConstraintError(
                f"MetaSchedule tuning measures on the build machine, so edgec tunes host builds "
                f"only; for {profile.name} tune on the device and pass its database as "
                "options['tuning_cache'] (tune_trials=0)")
        if symbolic:
            raise ConstraintError(
                f"tuning needs static shapes; bind {', '.join(symbolic)} with shapes=...")
        if target_dict["kind"] == "llvm":
            unit = next((u for u in profile.compute_units if u.kind == "cpu"), None)
            cores = int(getattr(unit, "cores", None) or os.cpu_count() or 1)
            target_dict.setdefault("num-cores", cores)
        target = tvm.target.Target(target_dict)
        return tvm_tune.tune(mod, target, trials, os.cpu_count() or 1, cache, default)
    target = tvm.target.Target(target_dict)
    if cache and all(os.path.exists(os.path.join(cache, f)) for f in _DB_FILES):
        return tvm_tune.apply_database(mod, target, cache, default)
    return tvm.compile(mod, target=target, relax_pipeline=tvm_tune.pipeline(target, default)), {
        "trials": 0, "database": None, "default_schedules": default}


# -- export ----------------------------------------------------------------------------------

def _export(tvm: Any, ex: Any, path: str, triple: str) -> None:
    if is_native(triple):
        ex.export_library(path)
        return
    from tvm.support import cc

    cxx = f"{triple}-g++"
    if shutil.which(cxx) is None:
        raise MissingToolchainError(
            cxx, f"Debian's g++-{triple.replace('_', '-')} (apt-get install "
            f"g++-{triple.replace('_', '-')})", f"to link the {triple} model.so")
    ex.export_library(path, fcompile=cc.cross_compiler(cxx))


def _modules(module: Any):
    yield module
    for child in module.imports:
        yield from _modules(child)


def _cuda_kernels(tvm: Any, ex: Any, target_dict: dict[str, Any], out_dir: str,
                  config: BuildConfig) -> dict[str, Any]:
    """Write the CUDA source TVM embedded in model.so, and compile it to an sm_XX cubin."""
    cuda = [m for m in _modules(ex.mod) if m.kind == "cuda"]
    if len(cuda) != 1:
        raise RuntimeError(f"expected one CUDA module in the build, found {len(cuda)}")
    source = cuda[0].inspect_source("cuda") or cuda[0].inspect_source("")
    with open(os.path.join(out_dir, "model.cu"), "w") as f:
        f.write(source)
    arch = target_dict["arch"]
    info: dict[str, Any] = {
        "arch": arch, "source": "model.cu", "cubin": None,
        "source_sha256": hashlib.sha256(source.encode()).hexdigest(),
        "embedded": "CUDA source (TVM's runtime compiles it at load unless given the cubin)",
    }
    if not config.option("cuda_cubin", True):
        return info
    if shutil.which("nvcc") is None:
        raise MissingToolchainError(
            "nvcc", "the CUDA toolkit (or pass options={'cuda_cubin': False} to ship CUDA "
            "source that TVM compiles on the device)", f"to compile the {arch} kernels")
    from tvm.support import nvcc

    with tvm.target.Target(target_dict), _quiet_warnings():
        cubin = nvcc.compile_cuda(source, target_format="cubin", arch=arch, compiler="nvcc",
                                  options=["-w"])
    with open(os.path.join(out_dir, "model.cubin"), "wb") as f:
        f.write(bytes(cubin))
    info["cubin"] = "model.cubin"
    info["nvcc"] = _nvcc_version()
    return info


def _nvcc_version() -> str:
    try:
        out = subprocess.run(["nvcc", "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    lines = [line for line in out.stdout.splitlines() if "release" in line]
    return lines[-1].strip() if lines else "unknown"


RUN_SCRIPT = r'''"""Run this edgec TVM bundle on the device.

    python run_tvm.py [inputs.npz] [--repeat N] [--jit] [--save outputs.npz]

Needs Apache TVM's Python package (its runtime) on the device; for CUDA bundles, TVM built with
CUDA. Inputs come from an .npz keyed by input name, else random data with the built shapes
(symbolic dims = 1). A CUDA bundle's model.so carries the kernels' CUDA source; this script hands
TVM the cubin compiled at build time (tvm_build.json says by which nvcc: the device's driver must
support that CUDA version). --jit makes TVM compile the source on the device instead (nvcc or
NVRTC there).
"""
import argparse, hashlib, json, os, sys, time

import numpy as np
import tvm
from tvm import relax

here = os.path.dirname(os.path.abspath(__file__))
ap = argparse.ArgumentParser()
ap.add_argument("inputs", nargs="?")
ap.add_argument("--repeat", type=int, default=10)
ap.add_argument("--jit", action="store_true")
ap.add_argument("--save")
args = ap.parse_args()
info = json.load(open(os.path.join(here, "tvm_build.json")))
cuda = info.get("cuda")
if cuda and cuda.get("cubin") and not args.jit:
    import tvm_ffi
    cubin = open(os.path.join(here, cuda["cubin"]), "rb").read()
    fallback = tvm_ffi.get_global_func("tvm_callback_cuda_compile", allow_missing=True)

    def _prebuilt(code):
        if hashlib.sha256(code.encode()).hexdigest() == cuda["source_sha256"]:
            return cubin
        if fallback is None:
            raise RuntimeError("this bundle's CUDA source changed; rebuild it or use --jit")
        return fallback(code)

    tvm_ffi.register_global_func("tvm_callback_cuda_compile", _prebuilt, override=True)
dev = tvm.cuda(0) if cuda else tvm.cpu(0)
vm = relax.VirtualMachine(tvm.runtime.load_module(os.path.join(here, "model.so")), dev)
given = dict(np.load(args.inputs)) if args.inputs else {}
rng = np.random.default_rng(0)
feeds = []
for i in info["inputs"]:
    x = given.get(i["name"])
    if x is None and i["shape"] is None:
        sys.exit(f"input {i['name']} has an unknown rank: pass it in an .npz")
    if x is None:
        shape = [d if isinstance(d, int) else 1 for d in i["shape"]]
        x = rng.random(shape) if "float" in i["dtype"] else np.zeros(shape)
    feeds.append(tvm.runtime.tensor(np.ascontiguousarray(x, dtype=i["dtype"]), dev))


def flat(v):
    return [v.numpy()] if hasattr(v, "numpy") else [a for item in v for a in flat(item)]


outs = flat(vm["main"](*feeds))
times = []
for _ in range(args.repeat):
    t = time.perf_counter()
    vm["main"](*feeds)
    dev.sync()
    times.append(time.perf_counter() - t)
print(f"device {dev}, median latency {1e3 * float(np.median(times)):.3f} ms")
for name, out in zip(info["outputs"], outs):
    print(name, out.shape, out.dtype)
if args.save:
    np.savez(args.save, **dict(zip(info["outputs"], outs)))
'''
