"""Arm Vela (ethos-u-vela 5.x): TOSA flatbuffer -> Ethos-U command stream, and its estimate.

Vela reads `.tosa` files directly (TOSA 1.0 PRO-INT; with TOSA input every op must be
NPU-legal, there is no CPU fallback inside Vela) and writes, with `--output-format raw`,
`<name>_vela.npz` (command stream, weights, scratch sizes) and the summary CSV
`<name>_summary_<system config>.csv`: NPU cycles, inference time at the system config's core
clock, SRAM and flash/DRAM use. The system config and memory mode are pinned from the device
profile (`toolchain`): the estimates differ several-fold between them.

Vela runs in a subprocess (`python -m ethosu.vela`) so its global state and logging never
leak into the compiler, with a time limit.
"""

from __future__ import annotations

import csv
import glob
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from compiler.errors import CompileError, ConstraintError, MissingDependencyError

__all__ = ["VelaResult", "run_vela", "vela_version"]

TIMEOUT_S = 600


@dataclass
class VelaResult:
    """Vela's summary for one compiled network."""

    cycles: int
    inference_ms: float
    sram_kib: float
    flash_kib: float  # off-chip flash or DRAM, whichever holds the weights
    macs: int
    npu_ops: int
    cpu_ops: int
    files: list[str]
    summary: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"cycles": self.cycles, "inference_ms": self.inference_ms,
                "sram_kib": self.sram_kib, "flash_kib": self.flash_kib, "macs": self.macs,
                "npu_ops": self.npu_ops, "cpu_ops": self.cpu_ops,
                "system_config": self.summary.get("system_config"),
                "memory_mode": self.summary.get("memory_mode"),
                "core_clock_hz": _num(self.summary.get("core_clock"))}


def vela_version() -> str:
    try:
        from importlib.metadata import version

        return version("ethos-u-vela")
    except Exception:
        raise MissingDependencyError("ethos-u-vela", "npu", "to compile for Ethos-U") from None


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return 0.0


def run_vela(tosa_path: str, out_dir: str, accelerator: str, system_config: str,
             memory_mode: str, optimise: str = "Performance") -> VelaResult:
    """Compile `tosa_path` into `out_dir`; CompileError with Vela's own message on failure."""
    vela_version()
    cmd = [sys.executable, "-m", "ethosu.vela", tosa_path, "--accelerator-config", accelerator,
           "--config", "Arm/vela.ini", "--system-config", system_config, "--memory-mode",
           memory_mode, "--output-format", "raw", "--optimise", optimise,
           "--output-dir", out_dir]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise CompileError(f"Vela did not finish within {TIMEOUT_S} s") from None
    text = (r.stdout or "") + (r.stderr or "")
    csvs = glob.glob(os.path.join(out_dir, "*_summary_*.csv"))
    if r.returncode != 0 or not csvs:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        msg = " | ".join(ln for ln in lines if "rror" in ln or "exceed" in ln.lower())[:400]
        msg = msg or " | ".join(lines[-3:])[:400]
        if "memory" in text.lower() and ("exceed" in text.lower() or "fit" in text.lower()):
            raise ConstraintError(f"the model does not fit the NPU memory ({accelerator}, "
                                  f"{system_config}/{memory_mode}): {msg}")
        raise CompileError(f"Vela could not compile the TOSA graph for {accelerator}: {msg}")
    with open(csvs[0]) as f:
        row = next(csv.DictReader(f))
    flash = max(_num(row.get("off_chip_flash_memory_used")), _num(row.get("dram_memory_used")),
                _num(row.get("on_chip_flash_memory_used")))
    npu = cpu = 0
    for ln in text.splitlines():
        if ln.startswith("NPU operators"):
            npu = int(ln.split("=")[1].split("(")[0])
        elif ln.startswith("CPU operators"):
            cpu = int(ln.split("=")[1].split("(")[0])
    files = sorted(os.path.relpath(p, out_dir) for p in glob.glob(os.path.join(out_dir, "*"))
                   if os.path.isfile(p))
    return VelaResult(cycles=int(_num(row.get("cycles_total"))),
                      inference_ms=_num(row.get("inference_time")) * 1e3,
                      sram_kib=_num(row.get("sram_memory_used")), flash_kib=flash,
                      macs=int(_num(row.get("nn_macs"))), npu_ops=npu, cpu_ops=cpu,
                      files=files, summary=dict(row))
