"""Per-layer sensitivity in one session, and end-to-end comparison with FP32.

Local proxy (`local_sensitivity`). Every candidate layer L gets a twin L' in one copy of the
FP32 graph: same op and attributes, reading the same float inputs, lowered alone (e.g. INT8 Q/DQ
on its activations, int8 per-channel weights, bias correction). L and L' outputs are both
exposed, so ONE session run over the kept calibration samples gives, per layer,

    r_L = sum ||y_L' - y_L||^2 / sum ||y_L||^2        (relative noise of the layer's output)

with SQNR_L = -10 log10(r_L) and the cosine of y_L' against y_L. This is the first-order
sensitivity: the noise the layer's own quantization adds where it is made. It ignores how the
rest of the network amplifies or damps that noise, which is why `passes.precision` only uses it
to rank layers and to guess where the budget runs out, and then measures whole mixed graphs
(`evaluate`) near that guess. Before, each layer was measured end to end in a session of its
own: one model export, session build and calibration run per layer (SigLIP-B/16: ~70 sessions).

End-to-end (`evaluate`). Against the FP32 outputs y (per output tensor, summed over samples):

- relative noise  r = sum ||y_q - y||^2 / sum ||y||^2, and SQNR = -10 log10(r) dB;
- cosine similarity of the flattened outputs;
- optionally a user metric `metric(reference, outputs) -> loss` (lists of output dicts, one per
  sample; lower is better, 0 means identical), e.g. the top-1 disagreement rate.

Several outputs: the worst one counts (largest r, smallest cosine). Quantization noise of
different layers is close to independent, so output noise adds up roughly in proportion to the
layers' local noise: r(prefix) ~ alpha * sum_i r_i, with alpha the network's gain.
Values are rounded to 9 significant digits so the same inputs always rank the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass

import numpy as np

from compiler.ir import Graph, Node, Value
from passes.calibration import CalibrationResult, make_session, run_model, with_outputs

__all__ = ["Sensitivity", "clone", "compare_outputs", "evaluate", "local_sensitivity",
           "pick_ranges"]

Metric = Callable[[list[dict[str, np.ndarray]], list[dict[str, np.ndarray]]], float]


def _r(x: float) -> float:
    return float(f"{x:.9g}")


@dataclass
class Sensitivity:
    """How far a model's outputs move from FP32 (see the module docstring)."""

    noise: float  # relative noise power r
    sqnr_db: float
    cosine: float
    metric: float | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        if math.isinf(d["sqnr_db"]):
            d["sqnr_db"] = 999.0
        return d


def compare_outputs(reference: list[dict[str, np.ndarray]], outputs: list[dict[str, np.ndarray]],
                    metric: Metric | None = None) -> Sensitivity:
    worst = Sensitivity(0.0, math.inf, 1.0)
    for name in reference[0]:
        acc = np.zeros(4)
        for ref, got in zip(reference, outputs):
            _accumulate(acc, ref[name], got[name])
        s = _from_sums(*acc)
        worst = Sensitivity(max(worst.noise, s.noise), min(worst.sqnr_db, s.sqnr_db),
                            min(worst.cosine, s.cosine))
    m = None if metric is None else _r(float(metric(reference, outputs)))
    return Sensitivity(worst.noise, worst.sqnr_db, worst.cosine, m)


def clone(graph: Graph) -> Graph:
    """An independent copy of `graph` (through ONNX; node names are kept)."""
    from compiler.onnx_io import export_onnx, import_onnx

    return import_onnx(export_onnx(graph), base_dir=graph.model.base_dir)


def evaluate(graph: Graph, calib: CalibrationResult, metric: Metric | None = None,
             threads: int = 2) -> Sensitivity:
    """Run `graph` on the kept calibration samples and compare with their FP32 outputs."""
    from compiler.onnx_io import export_onnx

    sess = make_session(export_onnx(graph), threads)
    outs = [run_model(sess, f) for f in calib.samples]
    return compare_outputs(calib.reference, outs, metric)


def _accumulate(acc: np.ndarray, ref: np.ndarray, got: np.ndarray) -> None:
    """acc += (|a|^2, |b - a|^2, a.b, |b|^2) in float64; elementwise products and pairwise sums,
    not BLAS dots (whose thread pool stalls on a loaded machine; pairwise sums are exact
    enough and the same on every machine)."""
    a = np.asarray(ref, np.float64).ravel()
    b = np.asarray(got, np.float64).ravel()
    d = b - a
    acc += (float(np.square(a).sum()), float(np.square(d).sum()), float((a * b).sum()),
            float(np.square(b).sum()))


def _from_sums(sig: float, err: float, dot: float, nq: float) -> Sensitivity:
    r = err / sig if sig > 0 else (0.0 if err == 0 else 1.0)
    c = dot / math.sqrt(sig * nq) if sig > 0 and nq > 0 else float(sig == nq)
    sqnr = -10.0 * math.log10(r) if r > 0 else math.inf
    return Sensitivity(_r(r), _r(sqnr) if math.isfinite(sqnr) else sqnr, _r(c))


def local_sensitivity(graph: Graph, layers: Iterable[str],
                      lower: Callable[[Graph, Node], object] | Mapping[str, Callable],
                      calib: CalibrationResult, threads: int = 2) -> dict:
    """Noise each named layer's own lowering adds to its output (see the module docstring):
    one graph copy with a lowered twin per layer, one session, one pass over the samples.
    `lower` may be a mapping {variant: lowering}: then every layer gets one twin per variant
    (still one session) and the result is {variant: {layer: Sensitivity}}."""
    variants = dict(lower) if isinstance(lower, Mapping) else {"": lower}
    names = list(dict.fromkeys(layers))
    if not names or not calib.samples:
        return {v: {} for v in variants} if isinstance(lower, Mapping) else {}
    g = clone(graph)
    by_name = {n.name: n for n in g}
    pairs: dict[tuple[str, str], tuple[str, str]] = {}
    for name in names:
        n = by_name[name]
        y = n.outputs[0]
        for var, fn in variants.items():
            out = Value(g.unique_name(y.name + "/lowered"), y.dtype, y.shape)
            twin = Node(n.op_type, list(n.inputs), [out], domain=n.domain,
                        name=g.unique_name(name + "/lowered"), attrs=dict(n.attrs))
            g.insert_after(n, twin)
            fn(g, twin)
            pairs[var, name] = (y.name, out.name)
    sess = make_session(with_outputs(g, [t for p in pairs.values() for t in p]), threads)
    sums = {key: np.zeros(4) for key in pairs}
    for feeds in calib.samples:
        got = run_model(sess, feeds)
        for key, (ref, low) in pairs.items():
            _accumulate(sums[key], got[ref], got[low])
    out = {var: {name: _from_sums(*sums[var, name]) for name in names} for var in variants}
    return out if isinstance(lower, Mapping) else out[""]


def pick_ranges(graph: Graph, layers: Iterable[str],
                make_lower: Callable[[Mapping], Callable[[Graph, Node], object]],
                calib: CalibrationResult, threads: int = 2
                ) -> tuple[str, dict[str, float], dict[str, Sensitivity]]:
    """The calibration method (of `calib.alternatives`, ties to the first) whose ranges make the
    named layers' own output noise smallest in total, all methods in one session. Returns
    (method, {method: summed relative noise}, the picked method's per-layer sensitivities).
    `make_lower(ranges)` gives the lowering that uses `ranges`."""
    alts = calib.alternatives
    got = local_sensitivity(graph, layers, {m: make_lower(r) for m, r in alts.items()}, calib,
                            threads)
    totals = {m: _r(sum(s.noise for s in got[m].values())) for m in alts}
    order = list(alts)  # ties: the first method listed
    best = min(totals, key=lambda m: (totals[m], order.index(m)))
    return best, totals, got[best]
