"""The cost model's parameters (`Params`: inverse efficiencies and overheads of one (device,
backend)), their generic priors, and the fitted ones stored one JSON file per (device, backend)
in compiler/cost/data/ (`Calibration`, written by `compiler.cost.calibration`'s fit and by
`compiler.cost.published`).

A host file records the CPU it was measured on (`host_fingerprint`); read on another CPU its
uncertainty is doubled.
"""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compiler.cost.kernels import COMPUTE_CLASSES, MEMORY_CLASSES
from compiler.cpuinfo import cpu_info

__all__ = ["EFF_KEYS", "Calibration", "Params", "calibration_path", "eff_key",
           "host_fingerprint", "load_calibration", "prior_params", "save_calibration"]

DATA_DIR = Path(__file__).resolve().parent / "data"
_CACHE: dict[tuple[str, str], Calibration | None] = {}
UNCALIBRATED_UNCERTAINTY = 0.5


def eff_key(cls: str, prec: str) -> str:
    """Efficiency-table key: compute classes per precision, memory-bound classes alone."""
    if cls in MEMORY_CLASSES:
        return cls
    p = {"bf16": "fp16", "int4-weight": "int4"}.get(prec, prec)
    return f"{cls}/{p}"


EFF_KEYS = tuple(["elementwise", "norm", "data", "qdq"] + [
    f"{c}/{p}" for c in COMPUTE_CLASSES for p in ("fp32", "fp16", "int8", "int4")])


@dataclass
class Params:
    """Inverse efficiencies and overheads of one (device, backend); see the module docstring."""

    inv_eff: dict[str, float]
    inv_bw: float = 1.5
    launch_us: float = 5.0
    call_us: float = 20.0
    conv_launch_us: float = 0.0  # extra fixed cost of a conv kernel (layout reorders, packing)
    depth_half: float = 0.0  # reduction length at which a GEMM kernel reaches half its efficiency
    row_ns: float = 0.0  # fixed cost per row of a normalisation/reduction kernel
    spatial_half: float = 0.0  # conv output plane (H x W) at which a conv reaches half speed
    inv_bw_cache: float = 0.4  # last-level-cache bandwidth = DRAM bandwidth / inv_bw_cache
    par_eff: float = 0.9  # each extra thread adds par_eff of one thread's speed
    unfused: float = 1.3  # conv slow-down when the runtime's own fusion/layout passes are off
    measured: tuple[str, ...] = ()  # efficiency keys the fit had measurements for ("" = n/a)
    mem_w: float = 1.0
    mem_a: float = 1.0
    mem_base_mb: float = 0.0
    uncertainty: float = UNCALIBRATED_UNCERTAINTY
    source: str = "prior: generic efficiencies, not calibrated"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Params:
        return cls(**{k: (dict(v) if isinstance(v, Mapping) else tuple(v) if isinstance(
            v, list) else v) for k, v in d.items()})


def prior_params(profile, backend: str, unit: str | None = None) -> Params:
    """Generic priors. CPU: ~50% of measured GEMM peak for conv/matmul fp32 (MLAS/oneDNN reach
    60-80% on large GEMMs, less on small layers), 30% for attention GEMMs (small, batched).
    GPU/NPU: an Ampere-class prior of ~40% of dense tensor-core peak for int8/fp16 convs at
    batch 1 (cf. MLPerf Orin SingleStream ResNet-50 ~ 8 TOPS effective of 85 dense), 30% for
    matmuls and attention; memory-bound kernels reach ~65% of DRAM bandwidth."""
    u = profile.unit(unit) if unit else profile.main_unit
    kind = u.kind if u is not None else "cpu"
    accel = kind in ("gpu", "dla", "npu", "fpga")
    base = {"conv": 2.5, "dwconv": 5.0, "matmul": 3.3, "attention": 3.3} if accel else \
        {"conv": 2.0, "dwconv": 4.0, "matmul": 2.0, "attention": 3.3}
    inv = {"elementwise": 1.0, "norm": 2.0, "data": 1.5, "qdq": 1.5}
    for k in EFF_KEYS:
        if "/" in k:
            cls = k.split("/")[0]
            inv[k] = base[cls] * (1.5 if k.endswith("/int4") else 1.0)
    if backend == "tvm":  # default schedules, no tuning: on this host TVM's fitted GEMM
        # efficiency is 3.3x below ONNX Runtime's (MLAS), its convs 12x (benchmarks/cost.py)
        inv.update({k: v * 3.0 for k, v in inv.items() if "/" in k})
    # GPU: back-to-back kernels on one stream leave ~1-2 us gaps (launches are asynchronous and
    # overlap execution); DLA/NPU: per-layer command overhead; CPU: one runtime op dispatch.
    launch = {"gpu": 1.5, "dla": 10.0, "npu": 2.0, "fpga": 0.5}.get(kind, 3.0)
    call = {"gpu": 30.0, "dla": 50.0}.get(kind, 20.0)
    # CPU convs pay a fixed cost per call on top (NCHWc layout reorders, im2col buffers)
    # Short reductions (depthwise convs, 1x1 convs on few channels, attention heads) spend more
    # of each output's time loading and storing accumulators: efficiency x K / (K + depth_half)
    # A conv loop over a small output plane vectorises poorly: TVM's default schedules (no
    # tuning) lose half their speed below ~200 output pixels per channel; library kernels
    # blocked over channels (MLAS NCHWc, oneDNN) far less (a 4-pixel prior the fit moves).
    spatial = 200.0 if backend == "tvm" else 0.0 if accel else 4.0
    return Params(inv, inv_bw=1.5, launch_us=launch, call_us=call,
                  conv_launch_us=0.0 if accel else 2.0, depth_half=0.0 if accel else 32.0,
                  row_ns=0.0 if accel else 5.0, spatial_half=spatial)


def host_fingerprint() -> str:
    """The CPU a host calibration is measured on: model, usable cores, architecture."""
    info = cpu_info()
    return f"{info['model']} x{info['cores']} ({platform.machine()})"


@dataclass
class Calibration:
    """Fitted parameters for one (device, backend) and the evidence behind them."""

    device: str
    backend: str
    params: Params
    fingerprint: str = ""
    residuals: dict[str, float] = field(default_factory=dict)
    measurements: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def params_for(self, profile) -> Params:
        """The params; uncertainty doubled when a host file came from another CPU."""
        if getattr(profile, "is_host", False) and self.fingerprint and \
                self.fingerprint != host_fingerprint():
            p = Params.from_dict(self.params.to_dict())
            p.uncertainty = min(2 * p.uncertainty, 1.0)
            p.source += f" (measured on {self.fingerprint}, not this CPU)"
            return p
        return self.params

    def describe(self) -> str:
        return f"{self.device}/{self.backend}: {self.params.source}"

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "backend": self.backend, "fingerprint": self.fingerprint,
                "params": self.params.to_dict(), "residuals": self.residuals,
                "notes": self.notes, "measurements": self.measurements}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Calibration:
        return cls(d["device"], d["backend"], Params.from_dict(d["params"]),
                   d.get("fingerprint", ""), dict(d.get("residuals", {})),
                   list(d.get("measurements", [])), list(d.get("notes", [])))


def calibration_path(device: str, backend: str, data_dir: Path | None = None) -> Path:
    return (data_dir or DATA_DIR) / f"{device}-{backend}.json"


def load_calibration(profile, backend: str, data_dir: Path | None = None
                     ) -> Calibration | None:
    """The stored calibration of (profile, backend), or None."""
    key = (str(data_dir or DATA_DIR), f"{profile.name}/{backend}")
    if key not in _CACHE:
        path = calibration_path(profile.name, backend, data_dir)
        _CACHE[key] = Calibration.from_dict(json.loads(path.read_text())) \
            if path.is_file() else None
    return _CACHE[key]


def save_calibration(cal: Calibration, data_dir: Path | None = None) -> Path:
    path = calibration_path(cal.device, cal.backend, data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cal.to_dict(), indent=1, sort_keys=True) + "\n")
    os.replace(tmp, path)
    _CACHE.clear()
    return path
