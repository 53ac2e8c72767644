"""Per-layer sensitivity: quantize one layer at a time, compare with FP32 on calibration data.

For each candidate layer a copy of the FP32 graph gets only that layer lowered (e.g. to INT8
Q/DQ) and runs in ONNX Runtime on the kept calibration samples. Against the FP32 outputs y
(per output tensor, summed over samples):

- relative noise  r = sum ||y_q - y||^2 / sum ||y||^2, and SQNR = -10 log10(r) dB;
- cosine similarity of the flattened outputs;
- optionally a user metric `metric(reference, outputs) -> loss` (lists of output dicts, one per
  sample; lower is better, 0 means identical), e.g. the top-1 disagreement rate.

Several outputs: the worst one counts (largest r, smallest cosine). Quantization noise of
different layers is close to independent, so relative noise adds: r(all) ~ sum_i r_i. That is
what makes the per-layer numbers usable as an additive budget in `passes.precision`.
Values are rounded to 9 significant digits so the same inputs always rank the same way.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass

import numpy as np

from compiler.ir import Graph, Node
from passes.calibration import CalibrationResult, make_session, run_model

__all__ = ["Sensitivity", "clone", "compare_outputs", "evaluate", "layer_sensitivity"]

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
    noise, cos = 0.0, 1.0
    for name in reference[0]:
        sig = err = dot = nq = 0.0
        for ref, got in zip(reference, outputs):
            a = np.asarray(ref[name], np.float64).ravel()
            b = np.asarray(got[name], np.float64).ravel()
            sig += float(a @ a)
            err += float((b - a) @ (b - a))
            dot += float(a @ b)
            nq += float(b @ b)
        r = err / sig if sig > 0 else (0.0 if err == 0 else 1.0)
        c = dot / math.sqrt(sig * nq) if sig > 0 and nq > 0 else float(sig == nq)
        noise, cos = max(noise, r), min(cos, c)
    sqnr = -10.0 * math.log10(noise) if noise > 0 else math.inf
    m = None if metric is None else _r(float(metric(reference, outputs)))
    return Sensitivity(_r(noise), _r(sqnr) if math.isfinite(sqnr) else sqnr, _r(cos), m)


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


def layer_sensitivity(graph: Graph, layers: Iterable[str],
                      lower: Callable[[Graph, Node], object], calib: CalibrationResult,
                      metric: Metric | None = None, threads: int = 2
                      ) -> dict[str, Sensitivity]:
    """Sensitivity of each named layer quantized alone by `lower(graph_copy, node)`."""
    from compiler.onnx_io import export_onnx, import_onnx

    base = export_onnx(graph)  # exported once; each copy re-reads it lazily
    out: dict[str, Sensitivity] = {}
    for name in layers:
        g = import_onnx(base, base_dir=graph.model.base_dir)
        node = next(n for n in g if n.name == name)
        lower(g, node)
        out[name] = evaluate(g, calib, metric, threads)
    return out
