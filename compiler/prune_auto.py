"""`pruning="auto"`: how much to prune, chosen with the target's cost model (ZipLM-style).

1. The cost model predicts the simplified graph on the target's default backend (fp32, without
   fusion, so kernels map to nodes); each node's predicted milliseconds weight it.
2. Selection (passes.pruning.select) then orders removal steps by standardized importance per
   predicted millisecond saved - the structures with the worst accuracy-loss per ms saved go
   first - and its target is a fraction of predicted latency instead of FLOPs.
3. Targets of 10%, 20%, ... 70% are tried on copies (with recovery). Each candidate is scored on
   the calibration samples with the metric (default: the fraction of top-1 predictions that
   changed vs the unpruned model) and predicted again, as compiled (fused), by the cost model.
   The fastest predicted candidate within `max_accuracy_drop` (default 0.01) - and under
   `max_latency_ms` when given, else the first to meet it - is applied to the graph. The search
   stops after two candidates over the budget. The report lists every candidate tried.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from compiler.errors import ConstraintError
from compiler.ir import Graph

__all__ = ["auto_prune", "node_ms"]

TARGETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)


def node_ms(graph: Graph, profile, backend: str, bindings: Mapping[str, int] | None) -> dict:
    """Predicted ms per node name (without fusion a kernel is one node, named after it;
    unnamed nodes, cheap element-wise ones in practice, get no weight)."""
    from compiler.cost import predict

    pred = predict(graph, {"backend": backend, "precision": "fp32", "fusion": False}, profile,
                   bindings=bindings)
    out: dict[str, float] = {}
    for row in pred.nodes:
        out[row["kernel"]] = out.get(row["kernel"], 0.0) + row["ms"]
    return out


def _copy(graph: Graph) -> Graph:
    from compiler.onnx_io import export_onnx, import_onnx

    return import_onnx(export_onnx(graph), base_dir=graph.model.base_dir)


def _predicted_ms(graph: Graph, profile, backend: str, bindings) -> float:
    from compiler.cost import predict
    from compiler.search import compiled_graph

    cfg = {"backend": backend, "precision": "fp32", "fusion": True}
    return predict(compiled_graph(_copy(graph), cfg, profile, bindings), cfg, profile,
                   bindings=bindings).latency_ms


def auto_prune(graph: Graph, source: Any, profile, calibration, metric, shapes,
               constraints: Mapping[str, Any], align: int) -> dict[str, Any]:
    """Prune `graph` in place as the module docstring says; returns the report."""
    from compiler.cost.model import bindings_from_shapes
    from compiler.onnx_io import export_onnx
    from compiler.precision_api import top1_disagreement
    from compiler.verify import reference_outputs
    from passes.pruning import prune_graph

    if not calibration:
        raise ConstraintError("pruning='auto' needs calibration data: each candidate's accuracy "
                              "is measured on it")
    budget = float(constraints.get("max_accuracy_drop", 0.01))
    max_ms = constraints.get("max_latency_ms")
    metric = metric or top1_disagreement
    backend = profile.backends[0]
    bindings = bindings_from_shapes(graph, shapes)
    if not bindings:
        batch = next(iter(calibration[0].values())).shape[0]
        bindings = {d: batch for v in graph.inputs for d in (v.shape or ())[:1]
                    if isinstance(d, str)}
    samples = calibration[:32]
    original = export_onnx(graph)
    ref = [reference_outputs(original, f) for f in samples]
    cost = node_ms(graph, profile, backend, bindings)
    base_ms = _predicted_ms(graph, profile, backend, bindings)
    tried: list[dict[str, Any]] = []
    best: tuple[float, float] | None = None
    over = 0
    for t in TARGETS:
        g = _copy(graph)
        prune_graph(g, t, calibration=calibration, align=align, bindings=bindings,
                    node_cost=cost)
        proto = export_onnx(g)
        loss = float(metric(ref, [reference_outputs(proto, f) for f in samples]))
        ms = _predicted_ms(g, profile, backend, bindings)
        ok = loss <= budget and (max_ms is None or ms <= max_ms or best is None)
        tried.append({"target": t, "metric": round(loss, 6), "predicted_ms": round(ms, 4),
                      "within_budget": loss <= budget})
        if loss <= budget:
            over = 0
            if ok and (best is None or ms < best[1]):
                best = (t, ms)
            if max_ms is not None and ms <= max_ms:
                break
        else:
            over += 1
            if over >= 2:
                break
    if best is None:
        report = prune_graph(graph, 0.0, calibration=calibration, align=align)
        report["auto"] = {"chosen": None, "why": f"no candidate kept the metric within "
                          f"{budget}", "tried": tried, "predicted_ms_unpruned": base_ms}
        return report
    report = prune_graph(graph, best[0], calibration=calibration, align=align,
                         bindings=bindings, node_cost=cost)
    report["auto"] = {"chosen": best[0], "predicted_ms_unpruned": round(base_ms, 4),
                      "predicted_ms": round(best[1], 4),
                      "predicted_speedup": round(base_ms / best[1], 3), "budget": budget,
                      "backend": backend, "tried": tried,
                      "metric_name": getattr(metric, "__name__", "metric")}
    return report
