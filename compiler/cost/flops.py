"""Floating-point operations per node, from shapes.

A multiply-accumulate counts as 2 FLOPs. Conv: 2·N·Cout·Hout·Wout·(Cin/groups)·kH·kW; MatMul
[.., M, K]x[.., K, N]: 2·batch·M·N·K; Gemm: 2·M·N·K; elementwise and normalisation ops: one
FLOP per output element (a few for Softmax/LayerNorm, which read their input several times);
data movement ops: zero. Symbolic dims are bound from `bindings` (default 1), so a number is
always returned, with the assumption stated by the caller.
"""

from __future__ import annotations

from collections.abc import Mapping

from compiler.ir import Graph, Node, Value

__all__ = ["node_flops", "graph_flops"]

_ELEMENTWISE_COST = {
    "Add": 1, "Sub": 1, "Mul": 1, "Div": 1, "Relu": 1, "Sigmoid": 4, "Tanh": 4, "Erf": 4,
    "Exp": 4, "Sqrt": 1, "Pow": 1, "Clip": 1, "HardSigmoid": 3, "HardSwish": 4, "Gelu": 8,
    "Softmax": 5, "LayerNormalization": 8, "BatchNormalization": 2, "ReduceMean": 1,
    "Where": 1, "Neg": 1, "Max": 1, "Min": 1, "LeakyRelu": 2, "Cast": 0,
}


def _dims(v: Value | None, bind: Mapping[str, int]) -> list[int] | None:
    if v is None or v.shape is None:
        return None
    return [d if isinstance(d, int) else int(bind.get(d, 1)) if isinstance(d, str) else 1
            for d in v.shape]


def _prod(xs) -> int:
    n = 1
    for x in xs:
        n *= int(x)
    return n


def node_flops(node: Node, bindings: Mapping[str, int] | None = None) -> int:
    """FLOPs of one node (0 when shapes are unknown or the op only moves data)."""
    b = bindings or {}
    op = node.op_type
    out = _dims(node.outputs[0], b) if node.outputs else None
    if op in ("Conv", "ConvInteger", "QLinearConv") and out is not None:
        w = _dims(node.inputs[1 if op != "QLinearConv" else 3], b)
        if w is None or len(w) < 3:
            return 0
        return 2 * _prod(out) * _prod(w[1:])
    if op in ("MatMul", "MatMulInteger", "FusedMatMul") and out is not None:
        a = _dims(node.inputs[0], b)
        k = a[-1] if a else 1
        return 2 * _prod(out) * k
    if op == "Gemm" and out is not None:
        a = _dims(node.inputs[0], b)
        if a is None:
            return 0
        k = a[0] if node.attr("transA", 0) else a[-1]
        return 2 * _prod(out) * k
    if op in _ELEMENTWISE_COST and out is not None:
        return _ELEMENTWISE_COST[op] * _prod(out)
    return 0


def graph_flops(graph: Graph, bindings: Mapping[str, int] | None = None) -> int:
    return sum(node_flops(n, bindings) for n in graph.all_nodes())
