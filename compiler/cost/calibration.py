"""Calibration: measure whole models on the host, fit the cost model, store one file per
(device, backend) in compiler/cost/data/ together with the measurements it came from.

Harness. Each measurement runs in a fresh subprocess (`python -m compiler.cost.calibration
--run-one SPEC`), so its peak RSS increase (VmHWM after the runs minus RSS before the
session is created) belongs to that model alone, and a crashing runtime cannot take the caller
down. Latency is the median of repeated runs after warm-up (all samples are stored, so a later
fit can use another statistic). Backends: onnxruntime always; openvino and tvm when
`targets.base.get_backend(name)` imports them, or, until those modules land, when their SDK
imports (the runner then drives the SDK directly and the file says `runner: direct-sdk`).

Fit. Parameters are log inverse efficiencies (per op class and precision), log bandwidth
inefficiency and log launch/call overheads; we minimise, with scipy's trust-region least
squares,  sum_m (log T_pred(m) - log T_meas(m))^2 + lam * ||theta - theta_prior||^2.
Why log-time: errors are multiplicative (a 2x miss on a 50 us model matters as much as on a
500 ms one; the acceptance metric is relative), noise on a shared machine is multiplicative,
and the roofline max() keeps the model non-linear anyway, so a linear NNLS on absolute time
would both overweight big models and be the wrong model. Working in log-parameters makes every
efficiency and overhead non-negative by construction; the ridge term keeps coefficients no
measurement identifies (e.g. attention in int4) at their prior instead of drifting. Memory is
linear (m_w * weights + m_a * activations + base), fitted by non-negative least squares on
relative error. The stored uncertainty is the 80th percentile of leave-one-model-out relative
errors (at least 10%).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from compiler.cost.kernels import CONV_CLASSES, MEMORY_CLASSES, Kernel, resolve_config
from compiler.cost.model import Params, eff_key, prior_params, thread_scale

__all__ = ["Calibration", "Sample", "available_host_backends", "fit", "fit_memory",
           "host_fingerprint", "load_calibration", "measure", "save_calibration"]

DATA_DIR = Path(__file__).resolve().parent / "data"
PRIOR_WEIGHT = 0.3
_CACHE: dict[tuple[str, str], Calibration | None] = {}


def host_fingerprint() -> str:
    from targets.host import cpu_info

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


# ------------------------------------------------------------------------------ fitting
@dataclass
class Sample:
    """One measured (model, config): its kernels, and what was measured."""

    model: str
    config: dict[str, Any]
    kernels: list[Kernel]
    latency_ms: float
    weights_mb: float = 0.0
    acts_mb: float = 0.0
    rss_mb: float | None = None


def _footprint(s: Sample) -> float:
    return (s.weights_mb + s.acts_mb) * 2**20


def _arrays(samples: Sequence[Sample], profile, keys: list[str]):
    """Per kernel: seconds at efficiency 1 (compute on all cores, memory at DRAM bandwidth),
    key index, sample index, cached share of its bytes, threads/cores, conv-without-runtime-
    fusion flag; and kernels per sample."""
    from compiler.cost.model import _peak, cache_fraction, runtime_fusion_off, threads_used

    cols: dict[str, list] = {k: [] for k in ("comp", "mem", "kidx", "sidx", "cache", "thr",
                                             "cores", "unfused", "memcls", "conv", "depth", "rows",
                                             "spatial")}
    nk = []
    for i, s in enumerate(samples):
        cfg = resolve_config(s.config, profile)
        u = profile.unit(cfg["unit"]) if cfg["unit"] else profile.main_unit
        cores = (u.cores if u is not None else None) or 1
        bw = profile.bandwidth(cfg["power_mode"])
        f = cache_fraction(profile, cfg["unit"], _footprint(s))
        off = runtime_fusion_off(cfg)
        for k in s.kernels:
            cols["comp"].append(k.flops / _peak(profile, k.precision, cfg["unit"],
                                                cfg["power_mode"]))
            cols["mem"].append(k.bytes / bw)
            cols["kidx"].append(keys.index(eff_key(k.op_class, k.precision)))
            cols["sidx"].append(i)
            cols["cache"].append(f)
            cols["thr"].append(threads_used(cfg["threads"], cores))
            cols["cores"].append(cores)
            cols["unfused"].append((off or k.plain) and k.op_class in CONV_CLASSES)
            cols["memcls"].append(k.op_class in MEMORY_CLASSES)
            cols["conv"].append(k.op_class in CONV_CLASSES)
            cols["depth"].append(k.depth)
            cols["rows"].append(k.rows)
            cols["spatial"].append(k.spatial)
        nk.append(len(s.kernels))
    out = {k: np.array(v, int if k in ("kidx", "sidx") else float) for k, v in cols.items()}
    out["nk"] = np.array(nk, float)
    return out


_EXTRA = ("inv_bw", "launch_us", "call_us", "inv_bw_cache", "par_eff", "unfused",
          "conv_launch_us", "depth_half", "row_ns", "spatial_half")
_FLOOR = 1e-3  # log-parameters need a positive start; a prior of 0 starts here


def _unpack(theta: np.ndarray, keys: list[str], base: Params) -> Params:
    p = Params.from_dict(base.to_dict())
    p.inv_eff = dict(base.inv_eff)
    for i, k in enumerate(keys):
        p.inv_eff[k] = float(np.exp(theta[i]))
    for name, t in zip(_EXTRA, theta[len(keys):]):
        setattr(p, name, float(np.exp(t)))
    return p


def fit(samples: Sequence[Sample], profile, backend: str, prior: Params | None = None,
        weight: float = PRIOR_WEIGHT) -> Params:
    """MAP fit of the latency parameters on log-time (see the module docstring)."""
    from scipy.optimize import least_squares

    prior = prior or prior_params(profile, backend)
    keys = sorted(prior.inv_eff)
    theta0 = np.log(np.maximum([prior.inv_eff[k] for k in keys] +
                               [getattr(prior, n) for n in _EXTRA], _FLOOR))
    a = _arrays(samples, profile, keys)
    meas = np.log([s.latency_ms * 1e-3 for s in samples])
    n, nkeys = len(samples), len(keys)
    lo = np.full(len(theta0), -np.inf)
    hi = np.full(len(theta0), np.inf)
    lo[nkeys + 4], hi[nkeys + 4] = np.log(0.2), 0.0  # parallel efficiency in [0.2, 1]
    theta0 = np.clip(theta0, lo + 1e-9, hi - 1e-9)

    def resid(theta: np.ndarray) -> np.ndarray:
        e = np.exp(theta)
        bw, launch, call, bw_cache, pe, unf, conv_launch, k_half, row_ns, s_half = e[nkeys:]
        s_thr = thread_scale(a["thr"], a["cores"], pe)
        eff = e[a["kidx"]] * np.where(a["depth"] > 0, 1 + k_half / np.maximum(a["depth"], 1e-9),
                                      1.0) * np.where(a["spatial"] > 0, 1 + s_half / np.maximum(
                                          a["spatial"], 1e-9), 1.0)
        memcls = a["memcls"] > 0
        comp = a["comp"] * np.where(memcls, 1.0, eff) * np.where(a["unfused"] > 0, unf, 1.0) \
            / s_thr
        mem = a["mem"] * (a["cache"] * bw_cache + (1 - a["cache"]) * bw)
        k_t = np.maximum(comp, mem) * np.where(memcls, eff, 1.0) + a["conv"] * conv_launch * 1e-6 \
            + a["rows"] * row_ns * 1e-9
        t = np.bincount(a["sidx"], k_t, minlength=n) + a["nk"] * launch * 1e-6 + call * 1e-6
        return np.concatenate([np.log(t) - meas, np.sqrt(weight) * (theta - theta0)])

    sol = least_squares(resid, theta0, method="trf", bounds=(lo, hi), x_scale=1.0,
                        max_nfev=2000)
    p = _unpack(sol.x, keys, prior)
    p.measured = tuple(sorted({keys[i] for i in set(a["kidx"].tolist())}))
    p.source = f"fitted on {n} host measurements ({backend})"
    return p


def fit_memory(samples: Sequence[Sample], params: Params) -> Params:
    """Non-negative least squares of measured RSS on (weights, activations, 1), relative."""
    from scipy.optimize import nnls

    rows = [s for s in samples if s.rss_mb and s.rss_mb > 0]
    if len(rows) < 3:
        return params
    a = np.array([[s.weights_mb, s.acts_mb, 1.0] for s in rows]) / \
        np.array([[s.rss_mb] for s in rows])
    x, _ = nnls(a, np.ones(len(rows)))
    p = Params.from_dict(params.to_dict())
    p.mem_w, p.mem_a, p.mem_base_mb = (float(v) for v in x)
    return p


def predict_sample(s: Sample, params: Params, profile) -> float:
    from compiler.cost.model import time_kernels

    return time_kernels(s.kernels, params, profile, s.config, _footprint(s))[0] * 1e3


# ------------------------------------------------------------------------------ harness
def available_host_backends(allow_direct: bool = True) -> dict[str, str]:
    """{backend: "module" | "direct-sdk"} for the backends that can run on this machine."""
    from targets.base import get_backend

    out = {}
    for name, sdk in (("onnxruntime", "onnxruntime"), ("openvino", "openvino"),
                      ("tvm", "tvm")):
        try:
            get_backend(name)
            out[name] = "module"
            continue
        except Exception:  # module missing or its SDK failed to import
            pass
        if allow_direct:
            try:
                __import__(sdk)
                out[name] = "direct-sdk"
            except Exception:
                pass
    return out


def measure(model_path: str, feeds_path: str, backend: str, options: Mapping[str, Any],
            budget_s: float = 1.5, timeout: float = 600) -> dict[str, Any]:
    """Latency samples and peak RSS increase of one model in a fresh subprocess."""
    spec = {"model": str(model_path), "feeds": str(feeds_path), "backend": backend,
            "options": dict(options), "budget_s": budget_s}
    env = dict(os.environ)
    if options.get("threads"):
        env["TVM_NUM_THREADS"] = str(options["threads"])
    cmd = [sys.executable, "-m", "compiler.cost.calibration", "--run-one"]
    cwd = str(Path(__file__).resolve().parents[2])
    if backend == "tvm" and not os.path.exists(str(model_path) + ".tvm.so"):
        # compile in its own process: LLVM's peak RSS must not count as the model's
        subprocess.run(cmd + [json.dumps({**spec, "build_only": True})], capture_output=True,
                       text=True, timeout=timeout, env=env, cwd=cwd)
    proc = subprocess.run(cmd + [json.dumps(spec)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["failed"]}
    return json.loads(lines[-1])


def _tvm_library(model_path: str, feeds: dict[str, np.ndarray], threads: int) -> str:
    """Compile (once, cached next to the model) as the TVM backend does for this CPU; the .so
    path."""
    so = model_path + ".tvm.so"
    if os.path.exists(so):
        return so
    import onnx

    from targets.tvm_build import host_library

    host_library(onnx.load(model_path), {k: list(v.shape) for k, v in feeds.items()},
                 so + ".tmp.so")
    os.replace(so + ".tmp.so", so)
    return so


def _runner(spec: dict, feeds: dict[str, np.ndarray]):
    """A zero-argument callable running one inference with the spec's backend."""
    backend, opts, path = spec["backend"], spec["options"], spec["model"]
    if backend == "onnxruntime":
        import onnxruntime as ort

        from targets.onnxruntime import session_options

        so = session_options({"graph_optimization_level": opts.get("opt_level", "all"),
                              "intra_op_num_threads": opts.get("threads", 0)})
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        return lambda: sess.run(None, feeds)
    if backend == "openvino":
        import openvino as ov

        req = ov.Core().compile_model(path, "CPU", spec["ov_properties"]).create_infer_request()
        return lambda: req.infer(feeds)
    if backend == "tvm":
        import tvm
        from tvm import relax

        lib = tvm.runtime.load_module(spec["tvm_so"])
        vm = relax.VirtualMachine(lib, tvm.cpu())
        args = [tvm.runtime.tensor(v) for v in feeds.values()]
        return lambda: vm["main"](*args)
    raise ValueError(f"no host runner for {backend}")


def _run_one(spec: dict) -> dict[str, Any]:
    import resource
    import time

    import psutil

    feeds = dict(np.load(spec["feeds"]))
    if spec["backend"] == "tvm":
        spec["tvm_so"] = _tvm_library(spec["model"], feeds, int(spec["options"].get("threads",
                                                                                     0)))
        if spec.get("build_only"):
            return {"built": spec["tvm_so"]}
    if spec["backend"] == "openvino":  # the properties the backend deploys (precision hint)
        from targets.base import BuildConfig
        from targets.openvino import ov_properties

        opts = spec["options"]
        spec["ov_properties"] = ov_properties("CPU", BuildConfig(
            precision=opts.get("precision", "fp32"), options={"threads": opts.get("threads")}))
    rss0 = psutil.Process().memory_info().rss
    run = _runner(spec, feeds)
    run()
    run()
    samples: list[float] = []
    t_end = time.perf_counter() + spec["budget_s"]
    while len(samples) < 3 or (time.perf_counter() < t_end and len(samples) < 200):
        t = time.perf_counter()
        run()
        samples.append((time.perf_counter() - t) * 1e3)
    # VmHWM is this process image's high-water mark; ru_maxrss is not usable here because
    # Linux carries the parent's maxrss across fork+exec
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) * 1024
    return {"median_ms": float(np.median(samples)), "min_ms": float(min(samples)),
            "samples_ms": [round(x, 4) for x in samples[:50]],
            "rss_increase_mb": max(peak - rss0, 0) / 2**20}


if __name__ == "__main__":  # the measuring subprocess
    if len(sys.argv) == 3 and sys.argv[1] == "--run-one":
        print(json.dumps(_run_one(json.loads(sys.argv[2]))))
    else:
        sys.exit("usage: python -m benchmarks cost  (measures, fits and writes the files)")
