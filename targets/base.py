"""The Backend contract and the backend registry.

A backend turns an optimized `Graph` into files a device runs, in four steps:

- `legality(graph, profile)`: which nodes run on the device's accelerator, which fall back (to
  what) and which cannot run at all (why), before anything is built;
- `emit(graph, profile, config, out_dir)`: write the model files (ONNX, IR, sources, scripts);
- `build(out_dir, profile, config)`: compile them (engine, shared library) where this machine can;
- `load(bundle_dir, manifest)`: a `Runner` for the built files, when `can_run(profile)`.

Vendor SDKs are imported inside the backend's own module, lazily, so `import targets` works with
none installed; a missing SDK raises `MissingDependencyError` naming the pip extra.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from compiler.errors import UnknownBackendError, UnsupportedOpError

if TYPE_CHECKING:
    from compiler.ir import Graph
    from targets.profile import DeviceProfile

__all__ = [
    "Backend",
    "BuildConfig",
    "LegalityReport",
    "Runner",
    "available_backends",
    "get_backend",
    "register_backend",
]


@dataclass(frozen=True)
class BuildConfig:
    """What compile() asks a backend for. `options` holds backend-specific knobs."""

    precision: str = "fp32"
    options: dict[str, Any] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    allow_fallback: bool = True
    #: a few calibration feeds, for backends that check their build on real inputs (not saved)
    samples: tuple[dict[str, Any], ...] = field(default=(), repr=False, compare=False)

    def option(self, key: str, default: Any = None) -> Any:
        return self.options.get(key, default)


@dataclass
class LegalityReport:
    """Where each node runs. Node keys are node names (or `op_type#index` when unnamed)."""

    backend: str
    target: str
    accelerated: list[str] = field(default_factory=list)
    fallback: dict[str, str] = field(default_factory=dict)  # node -> where it runs instead
    unsupported: dict[str, str] = field(default_factory=dict)  # node -> why it cannot run
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.unsupported

    def check(self, allow_fallback: bool = True) -> None:
        """Raise `UnsupportedOpError` naming the first offending node, if any."""
        if self.unsupported:
            node, why = next(iter(self.unsupported.items()))
            more = len(self.unsupported) - 1
            tail = f" (and {more} more)" if more else ""
            raise UnsupportedOpError(
                f"node {node!r} cannot run on {self.target} with backend {self.backend}: {why}"
                f"{tail}; try another backend or target")
        if self.fallback and not allow_fallback:
            node, where = next(iter(self.fallback.items()))
            raise UnsupportedOpError(
                f"node {node!r} would fall back to {where} on {self.target} "
                f"({self.backend}) and fallback is disabled")

    def to_dict(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "target": self.target,
            "accelerated": len(self.accelerated),
            "fallback": dict(self.fallback),
            "unsupported": dict(self.unsupported),
            "notes": list(self.notes),
        }


def node_key(node: Any, index: int) -> str:
    """The name a legality report uses for a node."""
    return node.name or f"{node.op_type}#{index}"


class Runner(ABC):
    """Executes a built artifact on this machine."""

    input_names: list[str]
    output_names: list[str]

    @abstractmethod
    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for the given inputs."""


class Backend(ABC):
    """A code generator/runtime for one family of devices. Subclasses set `name` and `extra`."""

    name: str = ""
    extra: str = ""  # the pip extra that installs its SDK
    #: fused/custom ops this backend accepts, as (domain, op_type); fusion passes read it
    accepted_fused_ops: frozenset[tuple[str, str]] = frozenset()

    @abstractmethod
    def legality(self, graph: Graph, profile: DeviceProfile,
                 config: BuildConfig | None = None) -> LegalityReport:
        """Where each node would run for `profile` under `config` (compute unit, shapes)."""

    @abstractmethod
    def emit(self, graph: Graph, profile: DeviceProfile, config: BuildConfig,
             out_dir: str) -> list[str]:
        """Write the model files into `out_dir`; returns their paths relative to it."""

    def runtime_precisions(self, profile: DeviceProfile) -> tuple[str, ...]:
        """The compute precisions ("fp32", "bf16", "fp16") this runtime can be asked to run a
        graph's float layers at on `profile`, the exact one ("fp32") first. Any other is a
        runtime hint (OpenVINO's INFERENCE_PRECISION_HINT, ONNX Runtime's Arm bf16 fast-math
        GEMMs): lossy, and offered only where the device computes it natively. The search
        enumerates them as `config["runtime_precision"]`; `emit` reads
        `config.option("runtime_precision")`. Default: the runtime offers none."""
        return ("fp32",)

    def build(self, out_dir: str, profile: DeviceProfile, config: BuildConfig) -> list[str]:
        """Compile what `emit` wrote (default: nothing to build). Returns new files."""
        return []

    def predicted(self, out_dir: str) -> dict[str, Any] | None:
        """A prediction the backend's own compiler made while building (Vela's cycle
        estimate), replacing the cost model's latency; None when it has none."""
        return None

    def can_run(self, profile: DeviceProfile) -> bool:
        """Whether this machine can execute the built artifact for `profile`."""
        return False

    def load_proxy(self, bundle_dir: str, manifest: dict[str, Any]) -> tuple[Runner, str] | None:
        """For a bundle this machine cannot run: a runner for the same emitted graph on this
        machine (e.g. ONNX Runtime on TensorRT's strongly typed ONNX) and a line saying what it
        checks. None when there is no such stand-in."""
        return None

    def load(self, bundle_dir: str, manifest: dict[str, Any]) -> Runner:
        raise UnknownBackendError(
            f"backend {self.name} cannot run its artifacts on this machine; copy the bundle "
            "to the device and use its README")

    def versions(self) -> dict[str, str]:
        """Versions of the SDKs this backend used, for the manifest."""
        return {}

    def manifest_entries(self, out_dir: str) -> dict[str, Any]:
        """Backend-specific sections for the manifest (e.g. an FPGA design's resources), read
        from what emit/build wrote into `out_dir`."""
        return {}


# Built-in backends: name -> "module:Class", imported only when asked for.
_BUILTIN: dict[str, str] = {
    "onnxruntime": "targets.onnxruntime:OnnxRuntimeBackend",
    "openvino": "targets.openvino:OpenVinoBackend",
    "tvm": "targets.tvm:TvmBackend",
    "tensorrt": "targets.tensorrt:TensorRtBackend",
    "tosa": "targets.tosa:TosaBackend",
    "hls": "targets.hls:HlsBackend",
}
_REGISTRY: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator: make a backend available under `cls.name`."""
    _REGISTRY[cls.name] = cls
    return cls


def available_backends() -> list[str]:
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def get_backend(name: str) -> Backend:
    if name not in _REGISTRY and name in _BUILTIN:
        module, _, cls = _BUILTIN[name].partition(":")
        importlib.import_module(module)
    if name not in _REGISTRY:
        raise UnknownBackendError(
            f"unknown backend {name!r}; available: {', '.join(available_backends())}")
    return _REGISTRY[name]()
