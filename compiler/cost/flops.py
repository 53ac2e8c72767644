"""Floating-point operations per node, from shapes.

A multiply-accumulate counts as 2 FLOPs. Conv: 2·N·Cout·Hout·Wout·(Cin/groups)·kH·kW (also the
integer/QLinear/fused forms); ConvTranspose: 2·N·Cin·Hin·Win·(Cout/groups)·kH·kW; MatMul
[.., M, K]x[.., K, N]: 2·batch·M·N·K (also MatMulInteger, QLinearMatMul, MatMulNBits,
FusedMatMul); Gemm: 2·M·N·K; fused attention (com.microsoft Attention / MultiHeadAttention /
GroupQueryAttention): 4·B·S·T·hidden for QK^T and PV plus 5 per score for the softmax.
Pooling: one FLOP per input element read by a window (output x kernel size); global pooling and
reductions: one per input element; elementwise and normalisation ops: a few FLOPs per output
element (Softmax/LayerNorm read their input several times); data movement ops: zero.

Symbolic dims are bound from `bindings`; a dim that is an expression of symbols (e.g.
"past_sequence_length + sequence_length", as ONNX Runtime's symbolic inference writes it) is
evaluated with them; anything unbound counts as 1, so a number is always returned and the
caller states the assumption. A value whose rank shape inference could not find takes the
shape of its producer's largest input (see `dims`), never zero.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping

from compiler.ir import Graph, Node, Value

__all__ = ["node_flops", "graph_flops", "dims", "numel", "bind_dim", "shape_gaps"]

_ELEMENTWISE_COST = {
    "Add": 1, "Sub": 1, "Mul": 1, "Div": 1, "Relu": 1, "Sigmoid": 4, "Tanh": 4, "Erf": 4,
    "Exp": 4, "Sqrt": 1, "Pow": 1, "Clip": 1, "HardSigmoid": 3, "HardSwish": 4, "Gelu": 8,
    "Softmax": 5, "LayerNormalization": 8, "BatchNormalization": 2, "ReduceMean": 1,
    "Where": 1, "Neg": 1, "Max": 1, "Min": 1, "LeakyRelu": 2, "Cast": 0,
    "Log": 4, "Reciprocal": 1, "Abs": 1, "Elu": 4, "Selu": 4, "PRelu": 2, "Softplus": 4,
    "Sin": 4, "Cos": 4, "Equal": 1, "Less": 1, "Greater": 1, "Not": 1, "And": 1, "Or": 1,
    "QuantizeLinear": 3, "DequantizeLinear": 2, "InstanceNormalization": 8,
    "GroupNormalization": 8, "RMSNormalization": 6, "SimplifiedLayerNormalization": 6,
    "SkipLayerNormalization": 9, "SkipSimplifiedLayerNormalization": 7, "FastGelu": 8,
    "BiasGelu": 9, "QuickGelu": 5, "BiasAdd": 2, "LogSoftmax": 6, "Sum": 1, "Mean": 1,
}
_REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceProd",
           "ReduceSumSquare", "GlobalAveragePool", "GlobalMaxPool", "ArgMax", "ArgMin"}
_MATMUL = {"MatMul", "MatMulInteger", "FusedMatMul", "QLinearMatMul", "MatMulNBits",
           "MatMulIntegerToFloat", "DynamicQuantizeMatMul"}
_CONV = {"Conv", "ConvInteger", "QLinearConv", "FusedConv"}
_ATTENTION = {"Attention", "MultiHeadAttention", "GroupQueryAttention"}
_SAFE_EXPR = re.compile(r"^[\w\s+\-*/(),]+$")
_FUNCS = {"floor": math.floor, "ceil": math.ceil, "Max": max, "Min": min, "max": max,
          "min": min}


def bind_dim(d: int | str | None, bind: Mapping[str, int]) -> int:
    """The integer value of one dim: ints as is, symbols (or +-*/ expressions of them) from
    `bind`, anything else 1."""
    if isinstance(d, int):
        return d
    if not isinstance(d, str):
        return 1
    if d in bind:
        return int(bind[d])
    if _SAFE_EXPR.match(d):
        expr = re.sub(r"[A-Za-z_]\w*", lambda m: m.group(0) if m.group(0) in _FUNCS
                      else str(int(bind.get(m.group(0), 1))), d)
        try:
            return max(int(eval(expr, {"__builtins__": {}}, dict(_FUNCS))), 1)
        except Exception:  # a malformed expression: treat like an unknown dim
            return 1
    return 1


def dims(v: Value | None, bind: Mapping[str, int] | None = None,
         _depth: int = 8) -> list[int] | None:
    """The shape of `v` with symbolic dims bound. Where shape inference left the rank unknown,
    the shape of the producer's largest activation input (an elementwise guess, so that no
    node is costed as free; `shape_gaps` lets the caller say so); None when nothing upstream
    is known."""
    if v is None:
        return None
    b = bind or {}
    if v.shape is not None:
        return [bind_dim(d, b) for d in v.shape]
    if v.producer is None or _depth <= 0:
        return None
    ins = [x for x in v.producer.inputs if x is not None]
    acts = [x for x in ins if x.const is None] or ins  # weights are not what flows on
    known = [d for d in (dims(x, b, _depth - 1) for x in acts) if d is not None]
    return max(known, key=_prod) if known else None


def shape_gaps(graph: Graph, skip: frozenset[str] | set[str] = frozenset()) -> list[str]:
    """Outputs (of nodes whose op is not in `skip`) whose rank or some dim stayed unknown."""
    return [o.name for n in graph.all_nodes() if n.op_type not in skip for o in n.outputs[:1]
            if o.name and o.type_proto is None
            and (o.shape is None or any(d is None for d in o.shape))]


_dims = dims  # the old private name


def _prod(xs) -> int:
    n = 1
    for x in xs:
        n *= int(x)
    return n


def numel(v: Value | None, bind: Mapping[str, int] | None = None) -> int:
    """Element count of `v` (0 when its rank is unknown)."""
    d = dims(v, bind)
    return 0 if d is None else _prod(d)


def _weight_dims(node: Node, b: Mapping[str, int]) -> list[int] | None:
    idx = 3 if node.op_type == "QLinearConv" else 1
    return dims(node.inputs[idx], b) if len(node.inputs) > idx else None


def node_flops(node: Node, bindings: Mapping[str, int] | None = None) -> int:
    """FLOPs of one node (0 when shapes are unknown or the op only moves data)."""
    b = bindings or {}
    op = node.op_type
    out = dims(node.outputs[0], b) if node.outputs else None
    if out is None:
        return 0
    if op in _CONV:
        w = _weight_dims(node, b)
        if w is None or len(w) < 3:
            return 0
        return 2 * _prod(out) * _prod(w[1:])
    if op == "ConvTranspose":
        x, w = dims(node.inputs[0], b), dims(node.inputs[1], b)
        if x is None or w is None or len(w) < 3:
            return 0
        return 2 * _prod(x) * _prod(w[1:])
    if op in _MATMUL:
        a = dims(node.inputs[0], b)
        k = a[-1] if a else 1
        return 2 * _prod(out) * k
    if op in ("Gemm", "QGemm"):
        a = dims(node.inputs[0], b)
        if a is None:
            return 0
        k = a[0] if node.attr("transA", 0) else a[-1]
        return 2 * _prod(out) * k
    if op in _ATTENTION:
        q = dims(node.inputs[0], b)
        if q is None or len(q) < 3:
            return 0
        heads = int(node.attr("num_heads", 1) or 1)
        kv = dims(node.inputs[1], b) if len(node.inputs) > 1 else None
        t = kv[1] if kv is not None and len(kv) >= 3 else q[1]
        return 4 * q[0] * q[1] * t * q[2] + 5 * q[0] * heads * q[1] * t
    if op in ("MaxPool", "AveragePool", "LpPool"):
        return _prod(out) * _prod(node.attr("kernel_shape", [1]))
    if op in _REDUCE:
        x = dims(node.inputs[0], b)
        return _prod(x) if x is not None else 0
    if op in _ELEMENTWISE_COST:
        return _ELEMENTWISE_COST[op] * _prod(out)
    return 0


def graph_flops(graph: Graph, bindings: Mapping[str, int] | None = None) -> int:
    return sum(node_flops(n, bindings) for n in graph.all_nodes())
