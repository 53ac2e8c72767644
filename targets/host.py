"""The host profile: this machine, detected and measured rather than looked up.

`detect_host()` reads the CPU model, ISA flags, usable cores and memory, derives the LLVM target
TVM should compile for, and measures three numbers once with short microbenchmarks (< 3 s in
all): FP32 peak (numpy sgemm), INT8 peak (onnxruntime MatMulInteger) and memory bandwidth (a
large numpy copy). Measured peaks are what this software stack reaches, not the silicon's
theoretical peak; that is what the cost model needs to predict host latency. The measurements
are cached as JSON, keyed by CPU model, core count and numpy/onnxruntime versions, so later
runs are instant; `refresh=True` measures again.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from compiler.cpuinfo import cpu_info
from targets.profile import ComputeUnit, DeviceProfile, PowerMode, Sourced

__all__ = ["build_profile", "channel_alignment", "detect_host", "half_peaks", "llvm_target",
           "measure"]

CACHE_VERSION = 1
GEMM_N = 1024  # FP32 sgemm size
INT8_N = 512  # INT8 MatMulInteger size
REPEATS = 5
COPY_BYTES = 128 * 2**20

_MEMO: dict[str, DeviceProfile] = {}


def last_level_cache() -> Sourced | None:
    """The largest data/unified CPU cache sysfs lists (usually the L3), or None."""
    best = 0
    for d in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            if (d / "type").read_text().strip() == "Instruction":
                continue
            size = (d / "size").read_text().strip().upper()
        except OSError:
            continue
        mult = {"K": 2**10, "M": 2**20, "G": 2**30}.get(size[-1:], 1)
        digits = size.rstrip("KMG")
        if digits.isdigit():
            best = max(best, int(digits) * mult)
    return Sourced(float(best), "measured: sysfs cpu0 cache sizes (largest data level)") \
        if best else None


def llvm_target(isa: tuple[str, ...], machine: str) -> dict[str, str]:
    """TVM/LLVM target pieces for this CPU: the newest LLVM CPU name its flags imply."""
    if machine in ("aarch64", "arm64"):
        return {"mtriple": "aarch64-linux-gnu", "mcpu": "generic"}
    has = set(isa).__contains__
    if has("amx_tile") or has("avx512_fp16"):
        mcpu = "sapphirerapids"
    elif has("avx512_bf16") and has("avx512_vnni"):
        mcpu = "cooperlake"
    elif has("avx512_vnni"):
        mcpu = "cascadelake"
    elif has("avx512f"):
        mcpu = "skylake-avx512"
    elif has("avx_vnni"):
        mcpu = "alderlake"
    elif has("avx2") and has("fma"):
        mcpu = "haswell"
    else:
        mcpu = "x86-64"
    return {"mtriple": "x86_64-linux-gnu", "mcpu": mcpu}


# Half-precision peaks a CPU's ISA implies, as multiples of its measured fp32 peak: (precision,
# flags any of which gives it, factor, why). First match wins. Estimates, not measurements: the
# cost model's calibration owns the efficiency on top (runtime hints, compiler.search).
HALF_RULES = (
    ("bf16", ("amx_bf16",), 4.0, "AMX-BF16 tile GEMMs, ~4x the AVX-512 fp32 rate oneDNN reaches"),
    ("bf16", ("avx512_bf16",), 1 / 1.6,
     "AVX512-BF16 without AMX: OpenVINO bf16 measured 1.6x slower than f32 (cnn, ResNet-50 at "
     "112 px, a 2-core Xeon; README)"),
    ("fp16", ("amx_fp16",), 4.0, "AMX-FP16 tile GEMMs, as AMX-BF16"),
    ("fp16", ("avx512_fp16",), 2.0, "AVX512-FP16: 32 fp16 lanes per 512-bit FMA, 2x fp32"),
    ("fp16", ("fp16",), 2.0, "Arm fp16 arithmetic: 8 fp16 lanes per 128-bit FMA, 2x fp32"),
    ("bf16", ("bf16",), 2.0, "Arm BF16 (BFMMLA/BFDOT): 2x the fp32 FMA rate"),
)


def half_peaks(isa: tuple[str, ...], machine: str, fp32: float) -> dict[str, Sourced]:
    """bf16/fp16 peaks the CPU's ISA implies (`HALF_RULES`), derived from the fp32 peak."""
    arm = machine in ("aarch64", "arm64")
    out: dict[str, Sourced] = {}
    for prec, flags, factor, why in HALF_RULES:
        is_arm_rule = flags in (("fp16",), ("bf16",))
        if prec in out or is_arm_rule != arm or not set(flags) & set(isa):
            continue
        out[prec] = Sourced(fp32 * factor, f"estimated: {factor:.3g} x the fp32 peak ({why})")
    return out


def _best(fn, repeats: int = REPEATS) -> float:
    fn()  # warm up (thread pools, page faults)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return max(best, 1e-9)


def _bench_fp32(n: int = GEMM_N) -> float:
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), dtype=np.float32)
    return 2.0 * n**3 / _best(lambda: np.matmul(a, b, out=out))


def _bench_int8(cores: int, n: int = INT8_N) -> float | None:
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (n, n), dtype=np.int8)
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "w"], ["y"])], "int8_gemm",
        [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
        [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = cores
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    feeds = {"a": rng.integers(0, 256, (n, n), dtype=np.uint8)}
    return 2.0 * n**3 / _best(lambda: sess.run(None, feeds))


def _bench_copy(nbytes: int) -> float:
    src = np.ones(nbytes // 4, dtype=np.float32)
    dst = np.empty_like(src)
    return 2.0 * src.nbytes / _best(lambda: np.copyto(dst, src))


def _memory_total() -> Sourced:
    try:
        import psutil

        return Sourced(float(psutil.virtual_memory().total),
                       "measured: psutil.virtual_memory().total")
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return Sourced(float(line.split()[1]) * 1024, "measured: /proc/meminfo MemTotal")
    except OSError:
        pass
    return Sourced(8 * 2.0**30, "unverified: memory size unreadable; 8 GiB placeholder")


def _power() -> Sourced:
    total, read = 0.0, []
    for zone in sorted(Path("/sys/class/powercap").glob("intel-rapl:[0-9]")):
        try:
            total += int((zone / "constraint_0_power_limit_uw").read_text()) / 1e6
            read.append(zone.name)
        except (OSError, ValueError):
            continue
    if total > 0:
        return Sourced(total, "measured: RAPL long-term package power limit (constraint_0) of "
                              + ", ".join(read) + " from /sys/class/powercap")
    return Sourced(15.0, "unverified: nominal 15 W package power (no readable RAPL limit)")


def _versions() -> dict[str, str]:
    try:
        import onnxruntime as ort

        ort_version = ort.__version__
    except ImportError:
        ort_version = "none"
    return {"numpy": np.__version__, "onnxruntime": ort_version}


def _cache_key(info: dict[str, Any]) -> str:
    blob = json.dumps([CACHE_VERSION, info["model"], info["machine"], info["cores"],
                       _versions()], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def measure(info: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Run the microbenchmarks; returns {"fp32"|"int8"|"bandwidth": {"value", "source"}}."""
    info = info or cpu_info()
    day = datetime.date.today().isoformat()
    v = _versions()
    out = {"fp32": {"value": _bench_fp32(), "source": (
        f"measured: numpy {v['numpy']} sgemm {GEMM_N}^3, best of {REPEATS}, {day}")}}
    int8 = _bench_int8(info["cores"])
    if int8 is not None:
        out["int8"] = {"value": int8, "source": (
            f"measured: onnxruntime {v['onnxruntime']} MatMulInteger u8xs8 {INT8_N}^3, "
            f"{info['cores']} threads, best of {REPEATS}, {day}")}
    nbytes = COPY_BYTES
    try:
        import psutil

        nbytes = int(min(nbytes, psutil.virtual_memory().available // 16))
    except ImportError:
        pass
    out["bandwidth"] = {"value": _bench_copy(max(nbytes, 2**20)), "source": (
        f"measured: numpy copy of {nbytes >> 20} MiB (read + write bytes), single thread, "
        f"best of {REPEATS}, {day}")}
    return out


def _load_cache(path: Path, key: str) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("key") != key:
        return None
    meas = data.get("measurements")
    ok = isinstance(meas, dict) and all(
        isinstance(meas.get(k), dict) and meas[k].get("value", 0) > 0 and meas[k].get("source")
        for k in ("fp32", "bandwidth"))
    return meas if ok else None


def _save_cache(path: Path, key: str, info: dict[str, Any], meas: dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "cpu": info["model"], "cores": info["cores"],
                                   "versions": _versions(), "measurements": meas}, indent=2))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home is no reason to fail a compile; we just measure next time


def detect_host(cache_dir: str | os.PathLike | None = None, refresh: bool = False
                ) -> DeviceProfile:
    """The profile of this machine, measured once and cached in `cache_dir`/host.json
    (default ~/.cache/edgec/host.json)."""
    path = Path(cache_dir) if cache_dir is not None else Path.home() / ".cache" / "edgec"
    path = path / "host.json"
    memo_key = str(path)
    if not refresh and memo_key in _MEMO:
        return _MEMO[memo_key]
    info = cpu_info()
    key = _cache_key(info)
    meas = None if refresh else _load_cache(path, key)
    if meas is None:
        meas = measure(info)
        _save_cache(path, key, info, meas)
    profile = build_profile(info, meas)
    _MEMO[memo_key] = profile
    return profile


def build_profile(info: dict[str, Any], meas: dict[str, Any], *,
                  cache_bytes: Sourced | None = None, memory: Sourced | None = None,
                  power: Sourced | None = None) -> DeviceProfile:
    """The host profile from `cpu_info()`-shaped `info` and `measure()`-shaped `meas`.

    The last-level cache, memory size and power limit are read from this machine unless given
    (tests pass fixed stand-ins so that no verdict depends on the machine running them)."""
    isa = info["isa"]
    peaks = {p: Sourced(float(meas[p]["value"]), meas[p]["source"])
             for p in ("fp32", "int8") if p in meas}
    peaks.update(half_peaks(isa, info["machine"], peaks["fp32"].value))
    constraints = ["peaks are measured with numpy/onnxruntime on this machine, not theoretical"]
    if info["machine"] in ("x86_64", "amd64"):
        if not {"avx512_vnni", "avx_vnni", "amx_int8"} & set(isa):
            constraints.append("no VNNI/AMX-INT8: int8 GEMM gains little over fp32 here")
        if not {"avx512_bf16", "amx_bf16"} & set(isa):
            constraints.append("no AVX512-BF16/AMX: bf16 is emulated (converted to fp32)")
        if "avx512_fp16" not in isa:
            constraints.append("no AVX512-FP16: fp16 compute is emulated on the CPU")
    align = channel_alignment(isa, info["machine"])
    if align > 1:
        constraints.append(
            f"channel_alignment {align}: ONNX Runtime's x86 NCHWc convolutions block channels by "
            f"the SIMD width ({align} fp32 lanes here); others fall back to a plain kernel "
            "(digits CNN with 30% of FLOPs pruned, batch 32, 2 threads, 30 runs on a loaded "
            "AVX2 EPYC, median/best: 112/3.1 ms unaligned, 2.1/0.92 ms rounded to 8, unpruned "
            "2.7/1.36 ms)")
    cpu = ComputeUnit("cpu", "cpu", peak_ops=peaks, cores=info["cores"], isa=isa,
                      llvm=llvm_target(isa, info["machine"]),
                      cache_bytes=cache_bytes or last_level_cache())
    bw = meas["bandwidth"]
    return DeviceProfile(
        name="host",
        description=f"this machine: {info['model']} ({info['cores']} usable cores, "
                    f"{info['machine']})",
        aliases=("local", "localhost"),
        compute_units=(cpu,),
        memory_bandwidth=Sourced(float(bw["value"]), bw["source"]),
        memory_capacity=memory or _memory_total(),
        power_modes=(PowerMode("default", power or _power()),),
        default_power_mode="default",
        backends=("onnxruntime", "openvino", "tvm"),
        precisions=("fp32", "fp16", "bf16", "int8", "int4-weight"),
        constraints=tuple(constraints),
        channel_alignment=align,
        is_host=True,
    )


def channel_alignment(isa: tuple[str, ...] | list[str], machine: str) -> int:
    """Channel multiple the host's CPU kernels want: the fp32 SIMD width on x86 (16 with
    AVX-512, 8 with AVX/AVX2), else 1 (no evidence of a preferred multiple)."""
    if machine not in ("x86_64", "amd64"):
        return 1
    if "avx512f" in isa:
        return 16
    return 8 if {"avx", "avx2"} & set(isa) else 1
