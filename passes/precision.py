"""Per-layer precision assignment under an accuracy budget (the "precision" pass, which
runs it, is `passes.precision_pass`).

Candidates are Conv, MatMul and Gemm nodes (the layers with int8 kernels); Softmax,
LayerNormalization and the other range-sensitive ops are never quantized.

Predicted speed-up proxy (`RooflineProxy`, replaceable by the cost model: anything with
`layer_time(layer, precision, profile) -> (seconds, why)` works). For a layer with M MACs,
weight/input/output element counts W/I/O, on the profile's main unit:

    t_p = max(2 M / (peak_fp32 * s_p),  bytes_p / bandwidth) + overhead_p

- s_fp32 = 1; s_int8 = min(peak_int8 / peak_fp32, cap) with cap 4 on CPUs with an int8 dot
  product (VNNI / AMX / Arm dotprod: 4 int8 MACs per fp32 FMA lane) and 2 without (AVX2
  vpmaddubsw); GPUs/NPUs use their peak ratio uncapped; s_fp16 likewise from fp16 peaks.
- On a CPU without an int8 dot product, s_int8 = 1 for depthwise convs, for reductions shorter
  than 64 (e.g. a 3x3 conv on 1-3 channels) and for attention MatMuls (both operands are
  activations, quantized on the fly, no packed weights): their int8 kernels are not faster, so
  with the Q/DQ overhead below they come out slower and stay float.
- bytes_fp32 = 4 (W + I + O); bytes_int8 = W + 4 I + I + I + 4 O (the fp32 input is read and
  written as int8 by QuantizeLinear, then read by the kernel); overhead_int8 = one extra op
  launch per quantized activation (2 us on a CPU, 5 us on a GPU).

gain = t_fp32 - t_int8. A layer whose gain is <= 0 stays in float whatever the budget.

Assignment (deterministic; spends the budget). Each remaining layer i has a first-order cost
c_i: the relative noise its own quantization adds to its output, measured for all layers in one
session (`passes.sensitivity.local_sensitivity`). Layers are sorted by (c_i / gain_i, graph
position): the cheapest noise per unit of predicted speed first. The quantized set is a prefix
of that fixed order; `search_prefix` finds the LONGEST prefix whose end-to-end error, measured
on the calibration data with the graph that ships (noise, or the user's metric), fits the
budget, with few measurements:

1. the whole order (every layer that gains): if it fits, done (one measurement);
2. otherwise the boundary is bracketed by [lo fits, hi fails] and the next probe is where the
   error, interpolated linearly in the cumulative proxy C(k) = sum_{i<=k} c_i between the two
   measured ends, reaches the budget (noise adds up: error(k) ~ alpha C(k)); a probe that moves
   the same end twice in a row bisects instead, so the bracket always shrinks fast;
3. it stops when the bracket closes (hi = lo + 1) or after `max_checks` measurements, keeping
   lo: the longest prefix measured to fit.

So the result is the fastest prefix within the budget, not the safest; the report states the
budget used (measured error / budget). The measured error is close to, but not exactly,
monotone in the prefix length; where it is not, a tighter budget can still keep a layer a
looser one dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from compiler.ir import Graph, Node
from passes.quantize import QUANTIZABLE, activation_inputs, const_array, weight_input

__all__ = ["LayerInfo", "RooflineProxy", "candidate_layers", "has_int8_dot", "layer_info",
           "order_layers", "search_prefix"]

DOT_ISA = {"avx512_vnni", "avx_vnni", "amx_int8", "dotprod", "i8mm"}
MIN_INT8_REDUCTION = 64


@dataclass(frozen=True)
class LayerInfo:
    """What the proxy knows about one candidate layer."""

    name: str
    op_type: str
    index: int  # position in the graph
    macs: float
    weight_elems: int
    input_elems: int  # activation elements read (all activation inputs)
    output_elems: int
    reduction: int  # length of the dot products (C/g * kh * kw, or K)
    depthwise: bool
    dynamic: bool  # both operands are activations (attention MatMul)
    spatial: int = 0  # a conv's output plane (H x W); 0 for matmuls

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op_type, "macs": int(self.macs), "reduction": self.reduction,
                "depthwise": self.depthwise, "dynamic": self.dynamic}


def _numel(shape: Sequence[int] | None) -> int:
    return int(np.prod(shape)) if shape else 0


def _shape(v, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...] | None:
    if v is None:
        return None
    if v.name in shapes:
        return tuple(shapes[v.name])
    return v.static_shape()


def candidate_layers(graph: Graph) -> list[Node]:
    """Float Conv/MatMul/Gemm nodes not already quantized, in graph order."""
    out = []
    for n in graph:
        if n.op_type not in QUANTIZABLE or n.domain not in ("", "ai.onnx"):
            continue
        if any(v is not None and v.producer is not None and v.producer.op_type ==
               "DequantizeLinear" for v in n.inputs):
            continue
        if any(v is not None and v.dtype not in (None, 1) for v in n.inputs[:2]):
            continue
        out.append(n)
    return out


def layer_info(node: Node, index: int, shapes: Mapping[str, tuple[int, ...]],
               batch_scale: float = 1.0) -> LayerInfo:
    """MACs and sizes of `node` from calibration-observed (or static) shapes; activation
    sizes and MACs are scaled by `batch_scale` (deployment batch / calibration batch)."""
    out = _numel(_shape(node.outputs[0], shapes)) * batch_scale
    acts = activation_inputs(node)
    ins = sum(_numel(_shape(node.inputs[i], shapes)) for i in acts) * batch_scale
    wi = weight_input(node)
    w = const_array(node.inputs[wi]) if wi is not None else None
    depthwise, spatial = False, 0
    if node.op_type == "Conv" and w is not None:
        red = int(np.prod(w.shape[1:]))
        group = int(node.attr("group", 1))
        depthwise = group > 1 and w.shape[1] == 1
        o = _shape(node.outputs[0], shapes)
        spatial = _numel(o[2:]) if o and len(o) > 2 else 0
    else:
        a = _shape(node.inputs[0], shapes)
        transa = node.op_type == "Gemm" and node.attr("transA", 0)
        red = int(a[0] if transa else a[-1]) if a else 0
    return LayerInfo(node.name, node.op_type, index, float(out) * red,
                     int(w.size) if w is not None else 0, int(ins), int(out), red, depthwise,
                     wi is None, spatial)


def has_int8_dot(unit) -> bool:
    return bool(DOT_ISA & set(unit.isa))


class RooflineProxy:
    """The documented default speed proxy (see the module docstring)."""

    def __init__(self, cpu_op_overhead_s: float = 2e-6, gpu_op_overhead_s: float = 5e-6):
        self.cpu_overhead, self.gpu_overhead = cpu_op_overhead_s, gpu_op_overhead_s

    def compute_speedup(self, layer: LayerInfo, precision: str, profile) -> tuple[float, str]:
        unit = profile.main_unit
        fp32 = profile.peak("fp32") or profile.peak("int8")
        peak = profile.peak(precision)
        if precision == "fp32":
            return 1.0, ""
        if not peak or not fp32:
            return 0.0, f"{unit.name} has no {precision} throughput"
        ratio = peak / fp32
        if unit.kind != "cpu":
            return ratio, ""
        if precision != "int8":
            return min(ratio, 2.0), ""
        if has_int8_dot(unit):
            return min(ratio, 4.0), ""
        if layer.depthwise:
            return 1.0, "depthwise conv: int8 kernel is not faster without an int8 dot product"
        if layer.dynamic:
            return 1.0, ("attention MatMul (two activations): int8 is not faster without an "
                         "int8 dot product")
        if layer.reduction < MIN_INT8_REDUCTION:
            return 1.0, (f"reduction of {layer.reduction} < {MIN_INT8_REDUCTION}: int8 kernel "
                         "is not faster without an int8 dot product")
        return min(ratio, 2.0), ""

    def layer_time(self, layer: LayerInfo, precision: str, profile) -> tuple[float, str]:
        s, why = self.compute_speedup(layer, precision, profile)
        if s <= 0:
            return math.inf, why
        fp32 = profile.peak("fp32") or profile.peak("int8")
        bw = profile.bandwidth()
        w, i, o = layer.weight_elems, layer.input_elems, layer.output_elems
        overhead = 0.0
        if precision == "int8":
            nbytes = w + 4 * i + i + i + 4 * o
            n_act = 2 if layer.dynamic else 1
            overhead = n_act * (self.cpu_overhead if profile.main_unit.kind == "cpu"
                                else self.gpu_overhead)
        elif precision in ("fp16", "bf16"):
            nbytes = 2 * (w + i + o)
        elif precision == "int4-weight":
            nbytes = w / 2 + 4 * (i + o)
        else:
            nbytes = 4 * (w + i + o)
        t = max(2.0 * layer.macs / (fp32 * s), nbytes / bw) + overhead
        return t, why


def order_layers(costs: Mapping[str, float], gains: Mapping[str, float],
                 index: Mapping[str, int]) -> list[str]:
    """Layers with gain > 0 and a finite cost, cheapest noise per unit of gain first."""
    names = [n for n in costs if gains.get(n, 0) > 0 and math.isfinite(costs[n])]
    return sorted(names, key=lambda n: (max(costs[n], 0.0) / gains[n], index[n], n))


def search_prefix(order: Sequence[str], costs: Mapping[str, float], budget: float,
                  measure: Callable[[Sequence[str]], float], max_checks: int = 6
                  ) -> tuple[int, list[tuple[int, float]]]:
    """The length of the longest prefix of `order` measured within `budget` (see the module
    docstring); `costs` are the first-order per-layer costs that guide the probes, `measure`
    the end-to-end error of a prefix. Returns (length, [(probed length, measured error)])."""
    n = len(order)
    cum = np.concatenate([[0.0], np.cumsum([max(float(costs[k]), 0.0) for k in order])])
    seen: dict[int, float] = {0: 0.0}
    checks: list[tuple[int, float]] = []
    lo, hi, k, moved = 0, n + 1, n, []
    while n and max_checks > 0:
        seen[k] = got = float(measure(order[:k]))
        checks.append((k, got))
        fits = got <= budget
        if fits:
            lo = k
        else:
            hi = k
        moved.append(fits)
        if hi - lo <= 1 or len(checks) >= max_checks:
            break
        k = (lo + hi) // 2
        if not (len(moved) > 1 and moved[-1] == moved[-2]):  # interpolate on C(k)
            e_lo, e_hi = seen[lo], seen[hi]
            if e_hi > e_lo and cum[hi] > cum[lo]:
                target = cum[lo] + (budget - e_lo) * (cum[hi] - cum[lo]) / (e_hi - e_lo)
                k = int(np.searchsorted(cum, target, side="right")) - 1
        k = min(max(k, lo + 1), hi - 1)
    return lo, checks

