"""This machine's CPU as Linux describes it (/proc/cpuinfo, the scheduler's affinity mask): model
name, architecture, usable cores and ISA flags in edgec's vocabulary.

It sits at the bottom of the package because both the host profile (`targets.host`) and the
cost model (a stored host calibration names the CPU it was measured on) read it.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

__all__ = ["ARM_FEATURES", "X86_FLAGS", "cpu_info"]

# /proc/cpuinfo flags worth recording (x86) and aarch64 "Features" renamed to our vocabulary.
X86_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl",
             "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16",
             "amx_int8", "amx_fp16")
ARM_FEATURES = {"asimd": "neon", "asimddp": "dotprod", "asimdhp": "fp16", "bf16": "bf16",
                "i8mm": "i8mm", "sve": "sve", "sve2": "sve2"}


def cpu_info() -> dict[str, Any]:
    """CPU model, machine, usable cores and ISA flags (our vocabulary) of this machine."""
    machine = platform.machine().lower()
    model, raw_flags = "", set()
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware") and not model:
            model = value.strip()
        elif key in ("flags", "features") and not raw_flags:
            raw_flags = set(value.split())
    if machine in ("x86_64", "amd64"):
        isa = tuple(f for f in X86_FLAGS if f in raw_flags)
    else:
        isa = tuple(v for k, v in ARM_FEATURES.items() if k in raw_flags)
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return {"model": model or platform.processor() or machine, "machine": machine,
            "cores": cores, "isa": isa}
