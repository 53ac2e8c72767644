"""What a model holds: op histogram, parameters, FLOPs, opsets, inputs and outputs."""

from __future__ import annotations

from collections import Counter
from typing import Any

import onnx

from compiler.cost.flops import graph_flops
from compiler.ir import Graph

__all__ = ["summarize", "format_summary", "format_bundle", "format_prediction"]


def _sig(values) -> list[dict[str, Any]]:
    return [{"name": v.name,
             "dtype": onnx.TensorProto.DataType.Name(v.dtype) if v.dtype else None,
             "shape": list(v.shape) if v.shape is not None else None} for v in values]


def summarize(graph: Graph, bindings: dict[str, int] | None = None) -> dict[str, Any]:
    ops = Counter(f"{n.domain}::{n.op_type}" if n.domain else n.op_type
                  for n in graph.all_nodes())
    # int64 initializers hold shapes and indices (a paddle-style Reshape's computed target),
    # never weights: they are not parameters
    params = sum(v.const.size for v in graph.initializers.values()
                 if v.const is not None and v.const.dtype != onnx.TensorProto.INT64)
    weight_bytes = sum(v.const.nbytes for v in graph.initializers.values()
                       if v.const is not None)
    return {
        "name": graph.name,
        "nodes": sum(ops.values()),
        "ops": dict(ops.most_common()),
        "parameters": params,
        "weight_bytes": weight_bytes,
        "flops": graph_flops(graph, bindings),
        "flops_assumes": "symbolic dims = 1 unless bound" if not bindings else bindings,
        "opsets": dict(graph.opset_imports),
        "inputs": _sig([v for v in graph.inputs if v.const is None]),
        "outputs": _sig(graph.outputs),
        "metadata": dict(graph.model.metadata_props),
    }


def format_summary(s: dict[str, Any]) -> str:
    def sig(items):
        return "\n".join(f"  {i['name']}: {i['dtype']} {i['shape']}" for i in items)

    lines = [f"model {s['name']!r}: {s['nodes']} nodes, {s['parameters']:,} parameters "
             f"({s['weight_bytes'] / 2**20:.1f} MiB), {s['flops'] / 1e9:.3f} GFLOPs "
             f"({s['flops_assumes']})",
             "opsets: " + ", ".join(f"{d or 'ai.onnx'}={v}" for d, v in s["opsets"].items()),
             "inputs:", sig(s["inputs"]), "outputs:", sig(s["outputs"]), "ops:"]
    lines += [f"  {op:<28} {n}" for op, n in s["ops"].items()]
    return "\n".join(lines)


def format_bundle(doc: dict[str, Any]) -> str:
    """A bundle's choices: target, backend, predictions and the per-layer precision map."""
    pred = doc.get("predicted") or {}
    lines = [f"bundle for {doc['target']} / {doc['backend']} "
             f"({doc['config'].get('precision')})",
             "predicted: " + ", ".join(f"{k} {v}" for k, v in pred.items())]
    rep = doc.get("precision") or {}
    layers = rep.get("layers") or {}
    if layers:
        lines.append(f"precision map ({len(layers)} layers; budget {rep.get('budget')}):")
        for name, info in layers.items():
            sens = info.get("sensitivity")
            s = "" if sens is None else f" sensitivity {sens}"
            lines.append(f"  {name:<40} {info.get('precision'):<12}{s}  {info.get('reason', '')}")
    return "\n".join(lines)


def format_prediction(p: dict[str, Any], top: int = 15) -> str:
    """The cost model's prediction and its most expensive kernels."""
    lines = [f"predicted on {p['target']} / {p['backend']}: {p['latency_ms']:.3f} ms "
             f"(+-{100 * p['uncertainty']:.0f}%), {p['memory_mb']:.1f} MB, "
             f"{p['energy_mj']:.2f} mJ", f"kernels (top {top} of {len(p['nodes'])} by time):"]
    for k in sorted(p["nodes"], key=lambda k: -k["ms"])[:top]:
        lines.append(f"  {k['ms']:9.4f} ms  {k['class']:<13} {k['precision']:<6} "
                     f"{k['bound']:<8} {'+'.join(k['ops'])[:60]}")
    lines += [f"assumes: {a}" for a in p.get("assumptions", [])]
    return "\n".join(lines)
