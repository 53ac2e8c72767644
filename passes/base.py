"""Pass, PassConfig, PassResult, PassContext and the pass registry.

A pass is a class with a frozen dataclass `Config`, a registry `name`, the targets it applies to
(`targets = None` means every target) and `run(graph, ctx) -> PassResult`. It reads the device
through `ctx.profile` and the chosen backend through `ctx.backend`, never globals or env vars.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, ClassVar

from compiler.errors import CompileError

if TYPE_CHECKING:
    from compiler.ir import Graph

__all__ = [
    "Pass",
    "PassConfig",
    "PassContext",
    "PassResult",
    "available_passes",
    "get_pass",
    "register_pass",
]


@dataclass(frozen=True)
class PassConfig:
    """Base of every pass's configuration (frozen: a pass never changes its own config)."""


@dataclass
class PassResult:
    """What a pass did: whether the graph changed, and counters worth reporting."""

    modified: bool
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassContext:
    """What passes may read besides the graph: the device, the backend, user shapes, and the
    answers of the layers above the passes that a pass needs (set by the driver, so a pass
    never imports the cost model or a backend):

    - `speed_proxy`: `(graph, profile, backend name) -> proxy` with `layer_time(layer,
      precision, profile) -> (seconds, why)`, the precision assignment's speed estimate
      (`compiler.cost.layer_proxy.speed_proxy`); None: `passes.precision.RooflineProxy`.
    """

    profile: Any = None  # targets.profile.DeviceProfile
    backend: Any = None  # targets.base.Backend
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    speed_proxy: Callable[[Graph, Any, str], Any] | None = None

    @property
    def target(self) -> str:
        return getattr(self.profile, "name", "host")

    def accepts(self, domain: str, op_type: str) -> bool:
        """Whether the backend takes the fused op (domain, op_type) as is."""
        accepted = getattr(self.backend, "accepted_fused_ops", frozenset())
        return (domain, op_type) in accepted


class Pass(ABC):
    """Base class. Subclasses set `name`, optionally `Config` and `targets`, and `run`."""

    name: ClassVar[str] = ""
    Config: ClassVar[type[PassConfig]] = PassConfig
    targets: ClassVar[tuple[str, ...] | None] = None

    def __init__(self, config: PassConfig | None = None, **overrides: Any) -> None:
        known = {f.name for f in fields(self.Config)}
        unknown = set(overrides) - known
        if unknown:
            raise CompileError(
                f"pass {self.name!r} has no option(s) {sorted(unknown)}; "
                f"it takes {sorted(known) or 'none'}")
        self.config = replace(config, **overrides) if config is not None \
            else self.Config(**overrides)

    def applies_to(self, ctx: PassContext) -> bool:
        return self.targets is None or ctx.target in self.targets

    @abstractmethod
    def run(self, graph: Graph, ctx: PassContext) -> PassResult: ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"


# name -> module that defines it; the module registers the class on import.
_BUILTIN: dict[str, str] = {
    "shape_inference": "passes.shape_inference",
    "normalize": "passes.normalize",
    "dce": "passes.dce",
    "identity_elimination": "passes.identity",
    "constant_folding": "passes.fold",
    "onnxsim": "passes.onnxsim_pass",
    "fusion": "passes.fusion",
    "precision": "passes.precision_pass",
    "pruning": "passes.pruning.prune",
}
_REGISTRY: dict[str, type[Pass]] = {}


def register_pass(cls: type[Pass]) -> type[Pass]:
    """Class decorator registering a pass under `cls.name`."""
    if not cls.name:
        raise TypeError(f"{cls.__name__} needs a name")
    _REGISTRY[cls.name] = cls
    return cls


def register_builtin(name: str, module: str) -> None:
    """Declare where a built-in pass lives, so it is imported only when used."""
    _BUILTIN[name] = module


def available_passes() -> list[str]:
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def get_pass(name: str, **config: Any) -> Pass:
    """An instance of the pass registered as `name`."""
    if name not in _REGISTRY and name in _BUILTIN:
        importlib.import_module(_BUILTIN[name])
    if name not in _REGISTRY:
        raise CompileError(f"unknown pass {name!r}; available: {', '.join(available_passes())}")
    return _REGISTRY[name](**config)
