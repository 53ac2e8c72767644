"""Fixed stand-in host profiles, so that no test's verdict depends on the machine running it.

The real host profile (`targets.host.detect_host`) measures this machine's peaks and reads its
ISA flags, cache, memory and power limit: numbers that move between runs and differ between
machines (development here is a 2-core AMD EPYC with AVX2 only; CI may be an Intel with
AVX-512/AMX). `tests/conftest.py` replaces it with `stand_in_host()` for every test except
those marked `live_host` (the tests of detection itself). A test that needs another CPU class
asks for one here (`vnni_host()`, `no_vnni_host()`, or `stand_in_host(isa=...)`).

Every profile is built by the product's own `targets.host.build_profile`, so it has exactly the
shape of a detected host. Only its TVM/LLVM codegen target is this machine's: code built for a
test must run here; that is codegen, not a verdict.

The default stand-in is the weakest x86-64 CPU a CI host has: AVX2+FMA, no VNNI, no AVX-512.
A profile must never claim an instruction the machine lacks where a claim changes the graph
that then runs here (e.g. ONNX Runtime's int8 `reduce_range` for CPUs without VNNI): a
graph made for AVX2 runs correctly on every newer CPU.
"""

from __future__ import annotations

from targets.profile import DeviceProfile, Sourced

__all__ = ["AVX2", "VNNI", "no_vnni_host", "stand_in_host", "vnni_host"]

AVX2 = ("sse4_2", "avx", "avx2", "fma", "f16c")
VNNI = AVX2 + ("avx512f", "avx512bw", "avx512vl", "avx512_vnni")
TAG = "estimated: test stand-in"


def stand_in_host(isa: tuple[str, ...] = AVX2, *, fp32: float = 0.3e12, int8_ratio: float = 1.8,
                  bandwidth: float = 20e9, cores: int = 4, cache_mb: float = 32.0,
                  model: str = "test stand-in x86-64 CPU", machine: str = "x86_64"
                  ) -> DeviceProfile:
    """A host profile with fixed numbers (defaults: a 4-core laptop-class AVX2 CPU, 0.3 TFLOPS
    fp32, int8 1.8x fp32 (vpmaddubsw), 20 GB/s, 32 MiB last-level cache, 16 GiB, 15 W)."""
    import dataclasses

    from compiler.cpuinfo import cpu_info
    from targets.host import build_profile, llvm_target

    info = {"model": model, "machine": machine, "cores": cores, "isa": tuple(isa)}
    meas = {"fp32": {"value": fp32, "source": TAG},
            "int8": {"value": fp32 * int8_ratio, "source": f"{TAG}: int8 {int8_ratio}x fp32"},
            "bandwidth": {"value": bandwidth, "source": TAG}}
    prof = build_profile(info, meas, cache_bytes=Sourced(cache_mb * 2**20, TAG),
                         memory=Sourced(16.0 * 2**30, TAG), power=Sourced(15.0, TAG))
    real = cpu_info()  # codegen only: what TVM builds for a test must run on this machine
    if real["machine"] != machine:
        return prof
    unit = dataclasses.replace(prof.main_unit, llvm=llvm_target(real["isa"], real["machine"]))
    return dataclasses.replace(prof, compute_units=(unit,))


def no_vnni_host() -> DeviceProfile:
    """An AVX2+FMA CPU without VNNI (int8 peak 1.8x fp32)."""
    return stand_in_host(AVX2, int8_ratio=1.8)


def vnni_host() -> DeviceProfile:
    """An AVX-512 CPU with VNNI (int8 peak 4x fp32)."""
    return stand_in_host(VNNI, int8_ratio=4.0)
