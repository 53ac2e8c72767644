"""Analytic cost model: a calibrated roofline per kernel, precision- and fusion-aware.

The kernels come from `compiler.cost.kernels` (how each runtime groups, fuses and types the
graph). Per kernel k on the configured compute unit (default: the profile's main unit):

    t_k = max(u_k F_k / (peak[p_k] * s_thr * eff'[c_k, p_k]),  B_k * beta) + t_launch[c_k]
          for compute classes (conv, dwconv, matmul, attention), and
    t_k = max(F_k / (peak[p_k] * s_thr),  B_k * beta) / eff[c_k] + t_launch + rows_k * t_row
          for memory-bound classes (elementwise, norm, data: how well the runtime streams them)
    T   = t_call + sum_k t_k,   t_launch[conv] = t_launch + t_conv (layout reorders, packing)
    eff' = eff * K / (K + K_half)  [* S / (S + S_half) for convs]
    beta = (f / eff_llc + (1 - f) / eff_bw) / bw,   f = min(1, LLC / (weights + peak acts))
    s_thr = (1 + (n - 1) pe) / (1 + (cores - 1) pe) for n < cores threads, else 1

K is the reduction length of one output (Cin/groups * kh * kw for a conv, the inner dimension
of a GEMM): a short reduction spends more of its time loading and storing accumulators
(depthwise convs, thin 1x1 convs). S is a conv's output pixels per channel: a schedule that
vectorises and parallelises over the output plane (TVM's default CPU conv schedule) runs far
below peak on the small planes of a network's late stages (7x7, 14x14). rows_k: the rows a
normalisation/reduction kernel loops over, each with a fixed cost. f is the share of the
model's bytes that stays in the unit's last-level cache between inferences (0 where the profile
gives no cache size): a GEMV whose weights fit in cache runs well above DRAM bandwidth. pe is
the fitted parallel efficiency of one more thread. u_k = `unfused` (fitted) for convs when the
runtime's own graph fusion is off (ONNX Runtime "basic": no NCHWc layouts, no Conv+activation
fusion) and for a conv the runtime runs on its plain kernel for another reason (ONNX Runtime's
int8 Conv rule), else 1.

Efficiencies are stored as inverse efficiencies (1/eff >= 0) in `Params`
(`compiler.cost.params`, with the generic priors and the stored calibrations);
`compiler.cost.calibration` fits them per (device, backend) from measurements.

Memory = m_w * weight bytes + m_a * peak live activations (`compiler.cost.memory`) + base.
Energy = T * P(power mode): the device is assumed to draw its power-mode budget (the host: its
RAPL package limit) while it runs; idle power and DVFS are not modelled, so this is an upper
bound of the energy of one inference, good for ranking configurations, not for battery sizing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from compiler.cost.flops import shape_gaps
from compiler.cost.kernels import (
    CONV_CLASSES,
    FREE_OPS,
    MEMORY_CLASSES,
    NATIVE_FUSION,
    Kernel,
    kernels,
    resident_weight_bytes,
    resolve_config,
)
from compiler.cost.memory import activation_liveness
from compiler.cost.params import Params, eff_key, load_calibration, prior_params
from compiler.ir import Graph

__all__ = ["Prediction", "bindings_from_shapes", "cache_fraction", "predict",
           "runtime_fusion_off", "thread_scale",
           "threads_used", "time_kernels"]

@dataclass
class Prediction:
    """What `predict` returns; `uncertainty` is relative (0.3 = +-30%)."""

    latency_ms: float
    memory_mb: float
    energy_mj: float
    uncertainty: float
    nodes: list[dict[str, Any]] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        """The four numbers compile() records as `Artifact.predicted`."""
        return {"latency_ms": round(self.latency_ms, 4), "memory_mb": round(self.memory_mb, 3),
                "energy_mj": round(self.energy_mj, 4),
                "uncertainty": round(self.uncertainty, 3)}

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "nodes": self.nodes, "assumptions": self.assumptions,
                "config": self.config}


def bindings_from_shapes(graph: Graph, shapes: Mapping[str, Any] | None) -> dict[str, int]:
    """Symbol bindings from user input shapes, e.g. {"pixel_values": (1, 3, 224, 224)}."""
    out: dict[str, int] = {}
    for v in graph.inputs:
        dims_ = (shapes or {}).get(v.name)
        if dims_ is not None and v.shape is not None:
            out.update({d: int(n) for d, n in zip(v.shape, dims_) if isinstance(d, str)})
    return out


def _peak(profile, prec: str, unit: str | None, mode: str | None) -> float:
    for p in {"int8": ("int8", "fp16", "fp32"), "fp16": ("fp16", "fp32"),
              "bf16": ("bf16", "fp16", "fp32"), "int4-weight": ("int4-weight", "fp32")
              }.get(prec, (prec, "fp32")):
        v = profile.peak(p, unit, mode)
        if v > 0:
            u = profile.unit(unit) if unit else profile.main_unit
            return v / (u.count if u is not None and u.kind == "dla" else 1)  # one DLA core
    return profile.peak("fp32", None, mode) or 1e9


def threads_used(threads: int, cores: int) -> int:
    """Threads a run gets: `threads` when it asks for fewer than `cores`, else all cores."""
    return threads if 0 < threads < cores else cores


def thread_scale(threads, cores, par_eff):
    """Speed of `threads` threads relative to all `cores` (1 + (n - 1) * par_eff threads'
    worth each); works elementwise on numpy arrays (the fit calls it that way)."""
    return (1 + (threads - 1) * par_eff) / (1 + (cores - 1) * par_eff)


def runtime_fusion_off(cfg: Mapping[str, Any]) -> bool:
    """The runtime's own graph fusion is off (ONNX Runtime "basic"); native fusers ignore it."""
    return not cfg["fusion"] and not NATIVE_FUSION.get(cfg["backend"], False)


def cache_fraction(profile, unit: str | None, footprint: float) -> float:
    """The share of a model's bytes that stays in the last-level cache between inferences:
    min(1, cache / (weights + peak activations)); 0 where the unit's cache is unknown."""
    u = profile.unit(unit) if unit else profile.main_unit
    c = getattr(u, "cache_bytes", None) if u is not None else None
    if c is None or not c.value or footprint <= 0:
        return 0.0
    return min(1.0, c.value / footprint)


def time_kernels(ks: list[Kernel], params: Params, profile, config: Mapping[str, Any],
                 footprint: float = 0.0) -> tuple[float, list[tuple[float, str]]]:
    """Total seconds and (seconds, bound) per kernel. `footprint`: the model's weight plus
    peak activation bytes, for the cached share of memory traffic."""
    cfg = resolve_config(config, profile)
    unit, mode = cfg["unit"], cfg["power_mode"]
    u = profile.unit(unit) if unit else profile.main_unit
    cores = (u.cores if u is not None else None) or 1
    s_thr = thread_scale(threads_used(cfg["threads"], cores), cores, params.par_eff)
    f = cache_fraction(profile, unit, footprint)
    sec_per_byte = (f * params.inv_bw_cache + (1 - f) * params.inv_bw) / profile.bandwidth(mode)
    off = runtime_fusion_off(cfg)
    per, total = [], params.call_us * 1e-6
    for k in ks:
        inv = params.inv_eff.get(eff_key(k.op_class, k.precision), 2.0)
        conv = k.op_class in CONV_CLASSES
        fixed = params.launch_us + (params.conv_launch_us if conv else 0.0)
        if conv and (off or k.plain):
            inv *= params.unfused
        mem_bound = k.op_class in MEMORY_CLASSES
        if k.depth > 0:
            inv *= 1.0 + params.depth_half / k.depth
        if k.spatial > 0:
            inv *= 1.0 + params.spatial_half / k.spatial
        tc = k.flops * (1.0 if mem_bound else inv) / (_peak(profile, k.precision, unit, mode)
                                                      * s_thr)
        tm = k.bytes * sec_per_byte
        t = max(tc, tm) * (inv if mem_bound else 1.0) + fixed * 1e-6 + k.rows * params.row_ns \
            * 1e-9
        per.append((t, "compute" if tc >= tm else "memory"))
        total += t
    return total, per


def predict(graph: Graph, config: Mapping[str, Any] | None, profile, *,
            bindings: Mapping[str, int] | None = None, calibration: Any = None) -> Prediction:
    """Predicted latency, memory and energy of one inference of `graph` under `config` on
    `profile`. `calibration`: a `Calibration`/`Params`; None loads the stored one for (device,
    backend), else generic priors with a wide uncertainty."""
    cfg = resolve_config(config, profile)
    if profile.main_unit.kind == "fpga":  # a dataflow design, not kernels: its own model
        from compiler.cost.fpga import predict_dataflow

        clock = float((getattr(profile, "toolchain", None) or {}).get("clock_period_ns", 5))
        ms, mb, notes = predict_dataflow(graph, profile, clock)
        watts = profile.power(cfg["power_mode"]).watts.value
        return Prediction(ms, mb, ms * watts, 0.5, [], notes,
                          {k: v for k, v in cfg.items() if v is not None})
    bind = dict(bindings or {})
    if any(o.shape is None for n in graph for o in n.outputs[:1] if n.op_type not in FREE_OPS):
        from passes.shape_inference import infer_shapes

        infer_shapes(graph)
    params, notes = _params(calibration, profile, cfg)
    filled = _fill_bound_shapes(graph, bind)  # shapes only these bindings determine
    try:
        ks, more = kernels(graph, cfg, profile, bind)
        notes += more
        wbytes = resident_weight_bytes(graph, cfg, profile, bind)
        acts = activation_liveness(graph, bind, fused=True).peak_bytes
        gaps = shape_gaps(graph, FREE_OPS)
    finally:
        for v, shape in filled:
            v.shape = shape
    seconds, per = time_kernels(ks, params, profile, cfg, wbytes + acts)
    mem = params.mem_w * wbytes + params.mem_a * acts + params.mem_base_mb * 2**20
    watts = profile.power(cfg["power_mode"]).watts.value
    unc = params.uncertainty + (0.1 if any("simulated" in a for a in notes) else 0.0)
    if bind:
        notes.append(f"symbolic dims bound: {bind}; others = 1")
    if filled:
        notes.append(f"shapes of {len(filled)} values inferred for the bound dims only")
    if gaps:  # costed from a guess (flops.dims): say so, and trust the number less
        costed = sum(1 for n in graph.all_nodes() if n.op_type not in FREE_OPS)
        share = min(0.5, len(gaps) / max(1, costed))
        unc += 0.1 + share
        notes.append(f"shapes unknown after inference for {len(gaps)} node outputs (e.g. "
                     f"{', '.join(gaps[:3])}): unknown ranks costed as the producer's largest "
                     f"input, unknown dims as 1; uncertainty widened by {0.1 + share:.0%}")
    rows = [{"kernel": k.name, "ops": list(k.ops), "class": k.op_class, "precision": k.precision,
             "flops": k.flops, "bytes": k.bytes, "ms": round(t * 1e3, 5), "bound": b}
            for k, (t, b) in zip(ks, per)]
    return Prediction(seconds * 1e3, mem / 2**20, seconds * 1e3 * watts, unc, rows, notes,
                      {k: v for k, v in cfg.items() if v is not None})


def _fill_bound_shapes(graph: Graph, bind: Mapping[str, int]) -> list[tuple[Any, Any]]:
    """Set the shapes the graph leaves unknown to those inferred under `bind`; returns
    (value, previous shape) pairs for the caller to restore."""
    if not bind:
        return []
    from passes.shape_inference import bound_shapes

    shapes = bound_shapes(graph, dict(bind))
    out = []
    for n in graph.all_nodes():
        for o in n.outputs:
            new = shapes.get(o.name)
            if new is not None and (o.shape is None or len(o.shape) == len(new)):
                out.append((o, o.shape))
                o.shape = new if o.shape is None else tuple(
                    d if d is not None else nd for d, nd in zip(o.shape, new))
    return out


def _params(calibration: Any, profile, cfg: dict) -> tuple[Params, list[str]]:
    if isinstance(calibration, Params):
        return calibration, [f"calibration: {calibration.source}"]
    if calibration is None:
        calibration = load_calibration(profile, cfg["backend"])
    if calibration is not None:
        return calibration.params_for(profile), [f"calibration: {calibration.describe()}"]
    p = prior_params(profile, cfg["backend"], cfg["unit"])
    return p, [f"no calibration for {profile.name}/{cfg['backend']}: generic priors, "
               f"uncertainty +-{p.uncertainty:.0%}"]
