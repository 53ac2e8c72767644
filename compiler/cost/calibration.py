"""Calibration: fit the cost model to whole models measured on the host (`targets.harness`
measures them; `benchmarks/cost.py` drives both and stores one file per (device, backend) in
compiler/cost/data/ with `compiler.cost.params.save_calibration`, together with the
measurements it came from).

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

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from compiler.cost.kernels import CONV_CLASSES, MEMORY_CLASSES, Kernel, resolve_config
from compiler.cost.model import thread_scale
from compiler.cost.params import Params, eff_key, prior_params

__all__ = ["Sample", "fit", "fit_memory", "predict_sample"]

PRIOR_WEIGHT = 0.3


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


