"""Device profiles (the classes): what each target can compute, how fast, and under which rules.

A `DeviceProfile` is a frozen description of one device: its compute units (GPU, DLA, CPU, NPU,
FPGA fabric) with peak *dense* ops/s per precision, memory bandwidth and capacity, power modes,
the backends that serve it and the legality rules (static shapes, op lists, channel alignment)
that passes and backends must respect. Every number is a `Sourced` value whose `source` starts
with a tag saying how much to trust it:

- ``datasheet:`` / ``vendor:`` - a vendor document or vendor repository;
- ``secondary:`` / ``press:`` - a third party quoting or measuring the vendor part;
- ``derived:`` - computed from sourced inputs, with the formula;
- ``measured:`` - measured on this machine (the host profile only);
- ``estimated:`` - a vendor estimate, not a measurement;
- ``unverified:`` - no primary source found; a placeholder the cost model must calibrate away.

Where a vendor publishes only sparse (2:4) throughput, dense = sparse / 2 ("derived"). Peak
values are per unit instance at the profile's fastest power mode; `PowerMode.unit_scales` (or
`ops_scale`) scales them down for slower modes. The host profile is measured, not tabulated:
see `targets.host`. The named profiles are in `targets.device_table`; `targets.devices` looks
them up by name.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any

from compiler.errors import UnknownTargetError

__all__ = [
    "BACKENDS",
    "GIB",
    "PRECISIONS",
    "SOURCE_TAGS",
    "UNIT_KINDS",
    "UNIT_PRECISIONS",
    "ComputeUnit",
    "DeviceProfile",
    "FrozenMap",
    "PowerMode",
    "Sourced",
]

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4-weight", "fixed")  # a profile supports
# ("fixed": per-layer ap_fixed types on an FPGA, passes/fixed_point.py)
UNIT_PRECISIONS = ("fp32", "fp16", "bf16", "int8", "int4", "fixed")  # ComputeUnit.peak_ops keys
UNIT_KINDS = ("cpu", "gpu", "dla", "npu", "fpga")
BACKENDS = ("onnxruntime", "openvino", "tvm", "tensorrt", "tosa", "hls")
SOURCE_TAGS = ("datasheet:", "vendor:", "secondary:", "press:", "derived:", "measured:",
               "estimated:", "unverified:")
GIB = 2**30


class FrozenMap(Mapping):
    """An immutable, hashable mapping (so frozen dataclasses holding one stay hashable)."""

    __slots__ = ("_d",)

    def __init__(self, items: Mapping | Iterable[tuple[Any, Any]] = ()) -> None:
        self._d = dict(items)

    def __getitem__(self, key: Any) -> Any:
        return self._d[key]

    def __iter__(self) -> Iterator:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __hash__(self) -> int:
        return hash(frozenset(self._d.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and self._d == dict(other)

    def __repr__(self) -> str:
        return f"FrozenMap({self._d!r})"


def _jsonable(x: Any) -> Any:
    if is_dataclass(x) and not isinstance(x, type):
        return {f.name: _jsonable(getattr(x, f.name)) for f in fields(x)}
    if isinstance(x, Mapping):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, frozenset):
        return sorted(x)
    if isinstance(x, (tuple, list)):
        return [_jsonable(v) for v in x]
    return x


@dataclass(frozen=True)
class Sourced:
    """A number and where it came from (see the module docstring for the source tags)."""

    value: float
    source: str

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(self)


@dataclass(frozen=True)
class ComputeUnit:
    """One kind of compute engine on the device; `peak_ops` is per instance (x `count`)."""

    name: str  # "gpu", "dla", "cpu", "npu", "igpu", "fpga"
    kind: str  # one of UNIT_KINDS
    peak_ops: Mapping[str, Sourced] = field(default_factory=FrozenMap)  # dense ops/s
    count: int = 1
    cores: int | None = None
    isa: tuple[str, ...] = ()
    llvm: Mapping[str, str] | None = None  # TVM target pieces: mtriple, mcpu (, mattr)
    cuda_arch: str | None = None
    ops: frozenset[str] | None = None  # ONNX op types it runs; None = any
    static_shapes: bool = False  # this unit needs every shape known at compile time
    cache_bytes: Sourced | None = None  # last-level cache the unit reads through; None unknown

    def __post_init__(self) -> None:
        object.__setattr__(self, "peak_ops", FrozenMap(self.peak_ops))
        if self.llvm is not None:
            object.__setattr__(self, "llvm", FrozenMap(self.llvm))
        if self.ops is not None:
            object.__setattr__(self, "ops", frozenset(self.ops))
        object.__setattr__(self, "isa", tuple(self.isa))
        if self.kind not in UNIT_KINDS:
            raise ValueError(f"unit {self.name}: kind {self.kind!r} not in {UNIT_KINDS}")
        bad = set(self.peak_ops) - set(UNIT_PRECISIONS)
        if bad:
            raise ValueError(f"unit {self.name}: unknown precisions {sorted(bad)}")

    def supports_op(self, op_type: str) -> bool:
        return self.ops is None or op_type in self.ops

    def native_half(self) -> tuple[str, ...]:
        """The half precisions ("bf16", "fp16") the unit computes natively, not by converting
        to fp32: from the ISA on CPUs (x86: AMX-BF16 or AVX512-BF16, AMX-FP16 or AVX512-FP16;
        Arm: the bf16 and fp16 arithmetic extensions), from the published peaks elsewhere."""
        if self.kind != "cpu":
            return tuple(p for p in ("bf16", "fp16") if p in self.peak_ops)
        isa = set(self.isa)
        out = []
        if {"amx_bf16", "avx512_bf16", "bf16"} & isa:
            out.append("bf16")
        if {"amx_fp16", "avx512_fp16", "fp16"} & isa:
            out.append("fp16")
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(self)


@dataclass(frozen=True)
class PowerMode:
    """A power budget. `ops_scale` is whole-device throughput relative to the fastest mode;
    `unit_scales` overrides it per unit name where the vendor publishes per-unit numbers;
    `bandwidth` overrides the profile's memory bandwidth in this mode when it differs."""

    name: str
    watts: Sourced
    ops_scale: float = 1.0
    note: str = ""  # where ops_scale / unit_scales come from
    unit_scales: Mapping[str, float] = field(default_factory=FrozenMap)
    bandwidth: Sourced | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "unit_scales", FrozenMap(self.unit_scales))

    def scale(self, unit_name: str) -> float:
        return self.unit_scales.get(unit_name, self.ops_scale)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(self)


@dataclass(frozen=True)
class DeviceProfile:
    """Everything passes, the cost model and backends may know about one target device."""

    name: str
    description: str
    aliases: tuple[str, ...]
    compute_units: tuple[ComputeUnit, ...]
    memory_bandwidth: Sourced  # bytes/s
    memory_capacity: Sourced  # bytes
    power_modes: tuple[PowerMode, ...]
    default_power_mode: str
    backends: tuple[str, ...]  # in order of preference; the first is the default
    precisions: tuple[str, ...]
    static_shapes: bool = False
    channel_alignment: int = 1
    constraints: tuple[str, ...] = ()
    is_host: bool = False
    toolchain: Mapping[str, str] = field(default_factory=FrozenMap)  # backend knobs to pin

    def __post_init__(self) -> None:
        object.__setattr__(self, "toolchain", FrozenMap(self.toolchain))
        if not self.compute_units:
            raise ValueError(f"{self.name}: no compute units")
        if self.default_power_mode not in {m.name for m in self.power_modes}:
            raise ValueError(f"{self.name}: default power mode {self.default_power_mode!r}")
        for value, allowed, what in ((self.backends, BACKENDS, "backends"),
                                     (self.precisions, PRECISIONS, "precisions")):
            if not value or set(value) - set(allowed):
                raise ValueError(f"{self.name}: bad {what} {value}")

    @property
    def main_unit(self) -> ComputeUnit:
        """The unit a model runs on by default (the first one)."""
        return self.compute_units[0]

    @property
    def default_backend(self) -> str:
        return self.backends[0]

    def unit(self, kind_or_name: str) -> ComputeUnit | None:
        """The unit with this name, else the first unit of this kind, else None."""
        for u in self.compute_units:
            if u.name == kind_or_name:
                return u
        return next((u for u in self.compute_units if u.kind == kind_or_name), None)

    def power(self, mode: str | None = None) -> PowerMode:
        """The named power mode (case-insensitive), or the default one."""
        want = (mode or self.default_power_mode).lower()
        for m in self.power_modes:
            if m.name.lower() == want:
                return m
        names = ", ".join(m.name for m in self.power_modes)
        raise UnknownTargetError(f"{self.name} has no power mode {mode!r}; choose from {names}")

    def peak(self, precision: str, unit: str | None = None, mode: str | None = None) -> float:
        """Dense peak ops/s at `precision` of one unit (default: the main unit; "all": the sum
        over units), x unit count, scaled to `mode` (default: the default mode). 0.0 where no
        number is published. "int4-weight" computes in fp16 (fp32 where fp16 is absent)."""
        pm = self.power(mode)
        if unit == "all":
            units = list(self.compute_units)
        else:
            u = self.main_unit if unit is None else self.unit(unit)
            if u is None:
                raise KeyError(f"{self.name} has no unit {unit!r}")
            units = [u]
        total = 0.0
        for u in units:
            p = precision
            if p == "int4-weight":
                p = "fp16" if "fp16" in u.peak_ops else "fp32"
            if p in u.peak_ops:
                total += u.peak_ops[p].value * u.count * pm.scale(u.name)
        return total

    def bandwidth(self, mode: str | None = None) -> float:
        """Memory bandwidth in bytes/s in `mode` (default mode if None)."""
        pm = self.power(mode)
        return (pm.bandwidth or self.memory_bandwidth).value

    def sourced_values(self) -> Iterator[tuple[str, Sourced]]:
        """Every number in the profile with a dotted path naming it."""
        for u in self.compute_units:
            for p, s in u.peak_ops.items():
                yield f"{u.name}.peak_ops.{p}", s
        yield "memory_bandwidth", self.memory_bandwidth
        yield "memory_capacity", self.memory_capacity
        for m in self.power_modes:
            yield f"power.{m.name}.watts", m.watts
            if m.bandwidth is not None:
                yield f"power.{m.name}.bandwidth", m.bandwidth

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (sources included), for `edgec targets --json` and manifests."""
        return _jsonable(self)
