"""Fixed-point precision policy: ap_fixed<W, I> per layer from calibration and sensitivity.

For an FPGA dataflow design (compiler/fpga_layers.py) every tensor gets its own fixed-point
type. The policy splits each type into its two parts and sets them from different evidence:

- integer bits I (range): from the calibration ranges of the tensor (passes/calibration.py,
  min-max observer), the fewest bits that hold every calibration value without overflow
  (`integer_bits_for`); results are rounded (RND) and saturate (SAT) beyond that range, so an
  input outside the calibration range clips instead of wrapping. Weights and biases take I
  from their largest magnitude. ReLU outputs are unsigned.
- fractional bits F = W - I (precision): from sensitivity under the accuracy budget. Each
  weight layer has two knobs, the width of its weights and of its result; the input has one.
  Starting from a near-float assignment (`start_width` bits everywhere), input first, then
  layer by layer, each knob is set to the narrowest of `widths` whose loss (with the knobs set
  so far) stays within budget / number of knobs, found by bisection (loss grows as a width
  shrinks); only the layers from the changed one on are recomputed. Then the whole
  assignment is measured end to end and, while over budget, the knob whose own loss is
  largest goes back up one step (the greedy order of the mixed-precision search,
  compiler/precision_api.py). Loss is `metric(reference, outputs)` when given (budget
  `max_metric_loss`), else the relative output noise against FP32 (budget from
  `min_sqnr_db`), both through `passes.sensitivity.compare_outputs`, measured on the
  calibration samples with the exact fixed-point reference (compiler/fixed_sim.py).
- accumulators: F_acc = F_in + F_w, so every product is exact, and I_acc from the worst case
  sum(|w|) * max|x| + |b| over the input type's whole range: no input the input type can hold
  overflows the sum. Only the final cast to the result type rounds.
- derived layers: ReLU keeps its input's fractional bits (unsigned, exact), max-pool and
  flatten keep the input type, global average pooling sums in an accumulator with the input's
  fractional bits plus log2(H*W) integer bits and keeps the input's fractional bits.

Without calibration samples (statistics only, e.g. the search's placeholder ranges) every knob
stays at `start_width`: no sensitivity search. The types go into the graph as
`node.meta["fixed_point"]` (compiler/fpga_layers.py), the report into the manifest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from compiler.errors import ConstraintError
from compiler.fixed_sim import input_codes, run_chain, to_output
from compiler.fixedpoint import FixedType, integer_bits_for
from compiler.fpga_layers import META_KEY, WEIGHT_KINDS, FpgaLayer, layers_from_graph
from compiler.ir import Graph
from passes.calibration import CalibrationResult, collect
from passes.sensitivity import compare_outputs

__all__ = ["assign_fixed_point", "DEFAULTS", "assign_types"]

INPUT = "<input>"  # the key of the input's width among the per-layer widths

DEFAULTS = {"start_width": 18, "widths": (16, 14, 12, 10, 8, 6), "max_result_width": 24,
            "min_sqnr_db": 25.0, "max_metric_loss": 0.01, "sensitivity_samples": 32}


def _t(width: int, integer: int, signed: bool = True) -> FixedType:
    return FixedType(max(width, 1), integer, signed, "RND", "SAT")


def assign_types(layers: list[FpgaLayer], ranges: Mapping[str, tuple[float, float]],
                 in_range: tuple[float, float], widths: Mapping[str, tuple[int, int]],
                 in_width: int, max_result_width: int = 24) -> FixedType:
    """Set `layer.types` for every layer from ranges and (weight, result) widths per weight
    layer; returns the input type."""
    lo, hi = in_range
    in_t = _t(in_width, integer_bits_for(lo, hi, lo < 0), lo < 0)
    cur = in_t
    for layer in layers:
        lo, hi = ranges.get(layer.output, (-1.0, 1.0))
        if layer.kind in WEIGHT_KINDS:
            ww, rw = widths[layer.name]
            wmax = float(np.abs(layer.weight).max()) if layer.weight.size else 0.0
            w_t = _t(ww, integer_bits_for(-wmax, wmax))
            bmax = float(np.abs(layer.bias).max()) if layer.bias.size else 0.0
            b_t = _t(max(ww, 8), integer_bits_for(-bmax, bmax))
            axis = (0, 1, 2) if layer.kind == "conv2d" else (0, 1) if layer.kind == \
                "dwconv2d" else (0,)
            wsum = np.abs(layer.codes("weight", w_t)).sum(axis=axis) * 2.0 ** -w_t.frac
            bias = np.abs(layer.codes("bias", b_t)) * 2.0 ** -b_t.frac
            bound = float((wsum * max(abs(cur.lo), abs(cur.hi)) * 2.0 ** -cur.frac
                           + bias).max())
            f_acc = cur.frac + w_t.frac
            i_acc = integer_bits_for(-bound, bound)
            acc = FixedType(min(i_acc + f_acc, 40), i_acc)
            i_res = integer_bits_for(lo, hi)
            res = _t(min(rw, max_result_width), i_res)
            layer.types = {"weight": w_t, "bias": b_t, "accum": acc, "result": res}
        elif layer.kind == "relu":
            i_res = integer_bits_for(0.0, max(hi, 0.0), signed=False)
            res = _t(min(i_res + cur.frac, max_result_width), i_res, signed=False)
            layer.types = {"result": res}
        elif layer.kind == "gap2d":
            n = layer.in_shape[0] * layer.in_shape[1]
            grow = int(math.ceil(math.log2(max(n, 1))))
            acc = FixedType(min(cur.width + grow + 1, 40), cur.integer + grow + 1)
            i_res = integer_bits_for(lo, hi, signed=cur.signed)
            res = _t(min(i_res + cur.frac, max_result_width), i_res, signed=cur.signed)
            layer.types = {"accum": acc, "result": res}
        else:  # maxpool2d, flatten: the input type passes through
            layer.types = {"result": cur}
        cur = layer.types["result"]
    return in_t


def _with(widths: dict, name: str, knob: int, w: int) -> dict:
    """`widths` with knob `knob` (0: weights, 1: result) of layer `name` set to `w`."""
    pair = list(widths[name])
    pair[knob] = w
    return {**widths, name: (pair[0], pair[1])}


def _loss(sens, metric) -> float:
    return float(sens.metric) if metric is not None else float(sens.noise)


def assign_fixed_point(graph: Graph, calibration: Iterable[Mapping] | CalibrationResult,
                       constraints: Mapping[str, Any] | None = None,
                       metric: Callable | None = None) -> dict[str, Any]:
    """Assign ap_fixed types to every layer of `graph` (in place, in node meta); returns the
    manifest's precision report."""
    opts = {**DEFAULTS, **(constraints or {})}
    layers = layers_from_graph(graph)
    x_name = next(v.name for v in graph.inputs if v.const is None)
    out_name = graph.outputs[0].name
    tensors = [x_name] + [layer.output for layer in layers]
    if isinstance(calibration, CalibrationResult):
        calib = calibration
        missing = [t for t in tensors if t not in calib.ranges]
        if missing:
            raise ConstraintError(f"the calibration statistics have no range for {missing[:3]};"
                                  " collect them on this graph")
    else:
        calib = collect(graph, tensors, calibration, "minmax",
                        keep=int(opts["sensitivity_samples"]))
    start = int(opts["start_width"])
    steps = sorted((w for w in opts["widths"] if w < start), reverse=True)
    weighted = [layer for layer in layers if layer.kind in WEIGHT_KINDS]
    widths = {layer.name: (start, start) for layer in weighted}
    widths[INPUT] = (start, start)  # the input's width: knob 0 only

    def build(ws) -> FixedType:
        return assign_types(layers, calib.ranges, calib.ranges[x_name], ws, ws[INPUT][0],
                            int(opts["max_result_width"]))

    budget_kind = "metric" if metric is not None else "sqnr"
    budget = float(opts["max_metric_loss"]) if metric is not None else \
        10 ** (-float(opts["min_sqnr_db"]) / 10)
    xs = np.concatenate([np.asarray(s[x_name]) for s in calib.samples]) \
        if calib.samples else None
    ref = np.concatenate([np.asarray(r[out_name]) for r in calib.reference]) \
        if calib.samples else None

    def measure(ws, at: int = 0, prefix=None) -> Any:
        """Loss of assignment `ws` on the kept samples; layers before `at` are unchanged, so
        their outputs come from `prefix` (the (codes, frac) after layer at - 1)."""
        in_t = build(ws)
        cur, frac = prefix if at else input_codes(in_t, xs)
        (y, f), = run_chain(layers, cur, frac, start=at)
        return compare_outputs([{out_name: ref}], [{out_name: to_output(layers, y, f)}], metric)

    own: dict[tuple[str, int], float] = {}
    checks: list[dict[str, Any]] = []
    if xs is not None and steps:
        share = budget / (2 * len(weighted) + 1)
        index = {layer.name: i for i, layer in enumerate(layers)}
        for name, at, knobs in [(INPUT, 0, (0,))] + [(ly.name, index[ly.name], (0, 1))
                                                      for ly in weighted]:
            in_t = build(widths)  # the prefix is the same for every trial of this layer
            prefix = None
            if at:
                cur, frac = input_codes(in_t, xs)
                (prefix,) = run_chain(layers[:at], cur, frac)
            for knob in knobs:
                # the narrowest width whose loss alone stays within its share (bisection over
                # `steps`, widest first: loss grows as the width shrinks)
                lo_i, hi_i, best = 0, len(steps) - 1, None
                while lo_i <= hi_i:
                    mid = (lo_i + hi_i) // 2
                    loss = _loss(measure(_with(widths, name, knob, steps[mid]), at, prefix),
                                 metric)
                    if loss <= share:
                        best, lo_i = (steps[mid], loss), mid + 1
                    else:
                        hi_i = mid - 1
                if best is not None:
                    widths = _with(widths, name, knob, best[0])
                    own[(name, knob)] = best[1]
        while True:
            final = measure(widths)
            checks.append({"widths": {k: list(v) for k, v in widths.items()},
                           "measured": _loss(final, metric)})
            if _loss(final, metric) <= budget:
                break
            lowered = [(own.get(k, 0.0), k) for k in own if widths[k[0]][k[1]] < start]
            if not lowered:
                break
            _, (name, knob) = max(lowered)
            wider = min((w for w in opts["widths"] if w > widths[name][knob]), default=start)
            widths = _with(widths, name, knob, min(start, wider))
    in_t = build(widths)
    final = measure(widths) if xs is not None else None
    report: dict[str, Any] = {
        "precision": "fixed", "input": {"tensor": x_name, "type": in_t.hls(),
                                        "range": list(calib.ranges[x_name]),
                                        "sensitivity": own.get((INPUT, 0))},
        "layers": {}, "calibration": {"method": calib.method, "samples": calib.n_samples,
                                      "kept_for_sensitivity": len(calib.samples)},
        "budget": {"kind": budget_kind, "value": budget, "checks": checks,
                   "measured": final.to_dict() if final is not None else None,
                   "why": None if xs is not None else
                   f"no calibration samples: every knob at {start} bits, no sensitivity"}}
    for i, layer in enumerate(layers):
        entry = {"kind": layer.kind, "output": layer.output,
                 "range": list(calib.ranges.get(layer.output, (0.0, 0.0))),
                 **{k: t.hls() for k, t in layer.types.items()}}
        if layer.kind in WEIGHT_KINDS:
            entry["sensitivity"] = {"weight": own.get((layer.name, 0)),
                                    "result": own.get((layer.name, 1))}
        report["layers"][layer.name] = entry
        node = next(n for n in graph if n.name == layer.name)
        meta = {k: t.hls() for k, t in layer.types.items()}
        if i == 0:
            meta["input"] = in_t.hls()
        node.meta[META_KEY] = meta
    bits = [layer.types["weight"].width for layer in weighted]
    report["totals"] = {"layers": len(layers), "weight_layers": len(weighted),
                        "mean_weight_bits": float(np.mean(bits)) if bits else None,
                        "weight_bits": int(sum(layer.weight.size * layer.types["weight"].width
                                               for layer in weighted))}
    return report
