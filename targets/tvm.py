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
import platform
from collections.abc import Iterator
from typing import Any

import numpy as np

from compiler.errors import CompileError, MissingDependencyError, UnknownBackendError
from targets.base import Backend, BuildConfig, LegalityReport, Runner, node_key, register_backend

__all__ = ["TvmBackend", "TvmRunner", "MissingToolchainError", "frontend_ops", "tvm_target"]

TARGET_FILE = "tvm_target.json"
BUILD_FILE = "tvm_build.json"
LIBRARY = "model.so"
# Domains whose ops TVM's ONNX frontend converts (it dispatches on op_type alone).
_DOMAINS = ("", "ai.onnx", "com.microsoft")
_MACHINES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


class MissingToolchainError(MissingDependencyError):
    """A system tool (cross linker, nvcc) is missing; says which OS package provides it."""

    def __init__(self, tool: str, package: str, purpose: str) -> None:
        CompileError.__init__(
            self, f"{tool} was not found on PATH; it is needed {purpose}; install {package}")
        self.package = package
        self.extra = "tvm"


def import_tvm() -> Any:
    """The `tvm` module, or `MissingDependencyError` naming the `tvm` extra."""
    try:
        import tvm
        from tvm import relax  # noqa: F401
        from tvm.relax.frontend import onnx as _onnx  # noqa: F401
    except ImportError as e:
        raise MissingDependencyError("apache-tvm", "tvm", "to build with TVM") from e
    return tvm


def frontend_ops() -> frozenset[str]:
    """Op types TVM's Relax ONNX frontend converts (its converter map, plus what it inlines)."""
    import_tvm()
    from tvm.relax.frontend.onnx import onnx_frontend

    return frozenset(onnx_frontend._get_convert_map()) | {"If", "Constant"}


# -- targets ---------------------------------------------------------------------------------

def _llvm(llvm: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": "llvm"}
    for key, value in dict(llvm or {}).items():
        if key == "mattr" and isinstance(value, str):
            value = [a for a in value.split(",") if a]
        out[key] = value
    return out


def _unit(profile: Any, kind: str) -> Any:
    return next((u for u in getattr(profile, "compute_units", ()) if u.kind == kind), None)


def tvm_target(profile: Any, unit: str | None = None) -> dict[str, Any]:
    """The TVM target (JSON dict) for a device profile.

    CPU units give `{"kind": "llvm", "mtriple", "mcpu"[, "mattr"]}` from their `llvm` field; a
    GPU with a `cuda_arch` gives `{"kind": "cuda", "arch", "host": <the CPU's llvm target>}`.
    `unit` ("cpu" | "gpu") picks one where a device has both; the default is the GPU.
    """
    cpu, gpu = _unit(profile, "cpu"), _unit(profile, "gpu")
    if unit not in (None, "cpu", "gpu"):
        raise UnknownBackendError(f"TVM unit must be 'cpu' or 'gpu', not {unit!r}")
    if unit != "cpu" and gpu is not None and gpu.cuda_arch:
        host = _llvm(cpu.llvm) if cpu is not None and cpu.llvm else {"kind": "llvm"}
        return {"kind": "cuda", "arch": gpu.cuda_arch, "host": host}
    if unit == "gpu":
        raise UnknownBackendError(f"{profile.name} has no CUDA GPU TVM can compile for")
    if cpu is not None and (cpu.llvm or getattr(profile, "is_host", False)):
        return _llvm(cpu.llvm)
    raise UnknownBackendError(
        f"TVM compiles for CPUs (LLVM) and CUDA GPUs; {profile.name} has neither")


def target_triple(target: dict[str, Any]) -> str:
    """The LLVM triple the exported library is linked for ('' = this machine's)."""
    llvm = target.get("host", target) if target["kind"] == "cuda" else target
    return str(llvm.get("mtriple", ""))


def is_native(triple: str) -> bool:
    machine = _MACHINES.get(platform.machine().lower(), platform.machine().lower())
    return not triple or triple.split("-")[0] == machine


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


# -- runner ----------------------------------------------------------------------------------

def flatten(value: Any) -> list[np.ndarray]:
    """The Relax VM's (possibly nested tuple) result as a flat list of numpy arrays."""
    if hasattr(value, "numpy"):
        return [value.numpy()]
    return [a for item in value for a in flatten(item)]


class TvmRunner(Runner):
    """Runs a host `model.so` with the Relax VM on the CPU."""

    def __init__(self, bundle_dir: str) -> None:
        tvm = import_tvm()
        from tvm import relax

        with open(os.path.join(bundle_dir, BUILD_FILE)) as f:
            info = json.load(f)
        self.inputs = info["inputs"]
        self.input_names = [i["name"] for i in self.inputs]
        self.output_names = list(info["outputs"])
        self.device = tvm.cpu(0)
        lib = tvm.runtime.load_module(os.path.join(bundle_dir, LIBRARY))
        self.vm = relax.VirtualMachine(lib, self.device)
        self._tvm = tvm

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        args = [self._tvm.runtime.tensor(
                    np.ascontiguousarray(feeds[i["name"]], dtype=i["dtype"]), self.device)
                for i in self.inputs]
        outs = flatten(self.vm["main"](*args))
        return dict(zip(self.output_names, outs))


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
