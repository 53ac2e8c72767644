"""What the TVM backend (`targets.tvm`) and its build (`targets.tvm_build`) share: the bundle's
file names, importing TVM, the TVM target of a device profile, and the host runner (Relax VM
over `model.so`). Both modules import this one, never each other's top: the backend calls the
build lazily, the build needs only what is here.
"""

from __future__ import annotations

import json
import os
import platform
from typing import Any

import numpy as np

from compiler.errors import CompileError, MissingDependencyError, UnknownBackendError
from targets.base import Runner

__all__ = ["BUILD_FILE", "LIBRARY", "TARGET_FILE", "MissingToolchainError", "TvmRunner",
           "flatten", "import_tvm", "is_native", "target_triple", "tvm_target"]

TARGET_FILE = "tvm_target.json"
BUILD_FILE = "tvm_build.json"
LIBRARY = "model.so"
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
