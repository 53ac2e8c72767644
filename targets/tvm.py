"""Apache TVM backend (TVM 0.27, Relax): LLVM for CPUs, CUDA for Jetson GPUs.

TVM imports the emitted `model.onnx` with its Relax ONNX frontend, lowers it with the target's
default Relax pipeline (legalize, fuse, DLight GPU schedules) or with a MetaSchedule database,
and exports one shared library that the Relax VM loads:

- host: `model.so` for this machine's LLVM CPU; the bundle runs here (`load`);
- aarch64 CPUs (raspberry-pi-5, a Jetson with `options={"unit": "cpu"}`): `model.so` is an
  aarch64 ELF linked by `aarch64-linux-gnu-g++` (Debian's g++-aarch64-linux-gnu);
- Jetson GPUs: CUDA `arch=sm_87` with an aarch64 LLVM host (Cortex-A78AE; TVM's own jetson
  tags name the Xavier core). On a machine without a CUDA driver, TVM 0.27 embeds the kernels'
  CUDA *source* in `model.so` and its runtime compiles it when the library is loaded. edgec also
  compiles that source here with nvcc into `model.cubin` (sm_87 SASS) and `run_tvm.py` hands the
  cubin to TVM's runtime through its `tvm_callback_cuda_compile` hook, so the device needs no
  compiler (`--jit` makes the device compile the source itself instead).

Weights are bound as constants (`keep_params_in_input=False`), so `model.so` is self-contained
and `main` takes exactly the ONNX graph inputs, in order. Dims left symbolic after binding
`BuildConfig.shapes` stay symbolic in Relax: the build works and runs any size, but kernels are
generic (slower) and MetaSchedule cannot tune them.

Untuned CPU kernels get edgec's default loop schedules (parallel, vectorized, blocked matmuls:
see `targets.tvm_tune`); TVM 0.27's own CPU pipeline leaves them serial and scalar.

Options (`BuildConfig.options`): `tune_trials` (int, default 0: untuned) runs MetaSchedule on
this machine, so only for the host profile; `tuning_cache` (folder) keeps the JSON database and
is reused, for any target, when it already holds records; `unit` ("cpu" | "gpu") picks the compute
unit on devices that have both; `default_schedules=False` turns the CPU default
schedules off; `cuda_cubin` (default True) compiles the CUDA kernels with nvcc at build time.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

from compiler.errors import MissingDependencyError, UnknownBackendError
from targets.base import Backend, BuildConfig, LegalityReport, Runner, node_key, register_backend
from targets.tvm_common import (
    TARGET_FILE,
    TvmRunner,
    import_tvm,
    is_native,
    target_triple,
    tvm_target,
)

__all__ = ["TvmBackend", "frontend_ops"]

# Domains whose ops TVM's ONNX frontend converts (it dispatches on op_type alone).
_DOMAINS = ("", "ai.onnx", "com.microsoft")


def frontend_ops() -> frozenset[str]:
    """Op types TVM's Relax ONNX frontend converts (its converter map, plus what it inlines)."""
    import_tvm()
    from tvm.relax.frontend.onnx import onnx_frontend

    return frozenset(onnx_frontend._get_convert_map()) | {"If", "Constant"}


# -- legality --------------------------------------------------------------------------------

def _walk(graph: Any) -> Iterator[Any]:
    for node in graph:
        yield node
        for sub in node.subgraphs():
            yield from _walk(sub)


def _why_not(node: Any, ops: frozenset[str]) -> str | None:
    if node.domain not in _DOMAINS:
        return f"TVM's Relax ONNX frontend does not read ops of domain {node.domain!r}"
    if node.op_type not in ops:
        return f"TVM's Relax ONNX frontend has no converter for {node.op_type}"
    return None


def symbolic_inputs(graph: Any, shapes: dict[str, Any] | None = None) -> dict[str, tuple]:
    """Graph inputs with dims that are not integers and that `shapes` does not bind."""
    shapes = shapes or {}
    out: dict[str, tuple] = {}
    for v in graph.inputs:
        if v.name in shapes or v.name in graph.initializers:
            continue
        if v.shape is None:
            out[v.name] = ("?",)
        elif any(not isinstance(d, int) for d in v.shape):
            out[v.name] = tuple(v.shape)
    return out


# -- the backend -----------------------------------------------------------------------------

@register_backend
class TvmBackend(Backend):
    """Apache TVM (Relax): LLVM CPU code for the host and Arm boards, CUDA for Jetson GPUs."""

    name = "tvm"
    extra = "tvm"

    def legality(self, graph, profile, config: BuildConfig | None = None) -> LegalityReport:
        config = config or BuildConfig()
        report = LegalityReport(self.name, profile.name)
        ops = frontend_ops()
        try:
            target = tvm_target(profile, config.option("unit"))
        except UnknownBackendError as e:
            for i, node in enumerate(graph):
                report.unsupported[node_key(node, i)] = str(e)
            return report
        for i, node in enumerate(graph):
            key = node_key(node, i)
            why = next((w for n in _walk_one(node) if (w := _why_not(n, ops))), None)
            if why:
                report.unsupported[key] = why
            else:
                report.accelerated.append(key)
        where = "CUDA " + target["arch"] if target["kind"] == "cuda" else "LLVM CPU code"
        report.notes.append(f"TVM compiles every node to {where}; nothing falls back")
        dynamic = symbolic_inputs(graph, config.shapes)
        if dynamic:
            dims = ", ".join(f"{k}{list(v)}" for k, v in dynamic.items())
            report.notes.append(
                f"inputs with symbolic dims: {dims}; unless BuildConfig.shapes binds them, TVM "
                "builds shape-generic kernels (slower) and MetaSchedule cannot tune them")
        if any(n.domain == "com.microsoft" for n in _walk(graph)):
            report.notes.append(
                "com.microsoft ops are converted by op_type (TVM's frontend ignores domains)")
        return report

    def emit(self, graph, profile, config: BuildConfig, out_dir: str) -> list[str]:
        from compiler.onnx_io import export_onnx
        from targets import tvm_build

        target = tvm_target(profile, config.option("unit"))
        os.makedirs(out_dir, exist_ok=True)
        model_path = os.path.join(out_dir, "model.onnx")
        export_onnx(graph, model_path)
        files = ["model.onnx"]
        if os.path.exists(model_path + ".data"):
            files.append("model.onnx.data")
        spec = {
            "profile": profile.name,
            "target": target,
            "triple": target_triple(target),
            "shapes": {k: list(v) for k, v in config.shapes.items()},
            "symbolic_inputs": {k: list(v) for k, v in
                                symbolic_inputs(graph, config.shapes).items()},
        }
        with open(os.path.join(out_dir, TARGET_FILE), "w") as f:
            json.dump(spec, f, indent=2)
        with open(os.path.join(out_dir, "run_tvm.py"), "w") as f:
            f.write(tvm_build.RUN_SCRIPT)
        return files + [TARGET_FILE, "run_tvm.py"]

    def build(self, out_dir: str, profile, config: BuildConfig) -> list[str]:
        from targets import tvm_build

        return tvm_build.build(out_dir, profile, config)

    def can_run(self, profile) -> bool:
        if not getattr(profile, "is_host", False):
            return False
        try:
            import_tvm()
        except MissingDependencyError:
            return False
        return True

    def load_proxy(self, bundle_dir: str, manifest: dict[str, Any]) -> tuple[Runner, str] | None:
        """For a cross bundle: the same model.onnx built by TVM for this machine's CPU."""
        try:
            import_tvm()
        except MissingDependencyError:
            return None
        from targets import tvm_build

        with open(os.path.join(bundle_dir, TARGET_FILE)) as f:
            spec = json.load(f)
        runner = tvm_build.host_proxy(bundle_dir)
        target = spec["target"]
        code = (f"CUDA {target['arch']} kernels" if target["kind"] == "cuda"
                else f"{spec['triple'] or 'LLVM'} code")
        return runner, (
            "TVM on this machine's CPU, built from the bundle's model.onnx with the same shapes "
            f"(checks TVM's import of the graph and the kernels' math; model.so's {code} is "
            "not run here)")

    def load(self, bundle_dir: str, manifest: dict[str, Any]) -> Runner:
        with open(os.path.join(bundle_dir, TARGET_FILE)) as f:
            spec = json.load(f)
        if spec["target"]["kind"] != "llvm" or not is_native(spec["triple"]):
            return super().load(bundle_dir, manifest)
        return TvmRunner(bundle_dir)

    def versions(self) -> dict[str, str]:
        try:
            tvm = import_tvm()
        except MissingDependencyError:
            return {}
        return {"tvm": str(tvm.__version__)}


def _walk_one(node: Any) -> Iterator[Any]:
    yield node
    for sub in node.subgraphs():
        yield from _walk(sub)
