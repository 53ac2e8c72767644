"""ONNX Runtime's integer-kernel patterns, made to appear in a mixed Q/DQ graph.

ONNX Runtime's CPU provider turns a Q/DQ group into an integer kernel only for certain shapes:
QLinearConv needs DQ -> Conv [-> Relu] -> Q, QGemm / MatMulIntegerToFloat need the int8 layer's
result re-quantized or a float-output form. Where a mixed assignment leaves an int8 layer next
to a float one, the pattern is broken and the runtime falls back to a float kernel that
dequantizes its weights on every call (measured: a 2 ms weight DequantizeLinear on a 0.09 ms
MLP). These two rewrites add the Q -> DQ pairs that restore the patterns; they change numbers
only by one more rounding of an activation to the grid it is already read on.
"""

from __future__ import annotations

from compiler.ir import Graph
from passes.quantize import activation_inputs, insert_act_qdq, result_after_relu

__all__ = ["fed_by_int8", "requantize_float_inputs", "requantize_int8_outputs"]

# Ops an int8 layer's output may pass through before the next layer reads it.
_PASS_THROUGH = frozenset({"Relu", "Clip", "Add", "Sub", "Mul", "Reshape", "Flatten",
                           "Transpose", "MaxPool", "Identity", "Squeeze", "Unsqueeze"})


def fed_by_int8(v) -> bool:
    """Whether `v` comes from an int8 layer through elementwise/layout ops only."""
    for _ in range(8):
        p = v.producer if v is not None else None
        if p is None:
            return False
        if p.meta.get("precision") == "int8":
            return True
        if p.op_type not in _PASS_THROUGH or p.domain:
            return False
        live = [x for x in p.inputs if x is not None and x.const is None]
        if len(live) != 1:
            return False
        v = live[0]
    return False


def requantize_float_inputs(graph: Graph, float_layers: set[str], ranges, act_dtype) -> set:
    """ONNX Runtime turns DQ -> MatMul/Gemm -> ... -> Q into an integer kernel (QGemm) only when
    the layer's result is re-quantized; otherwise it runs the layer in float and dequantizes the
    weights on every call (measured: a 2 ms weight DequantizeLinear on a 0.09 ms MLP). So the
    activation input of a float layer fed by an int8 layer gets its Q -> DQ too."""
    done = set()
    for n in [x for x in graph if x.name in float_layers]:
        for i in activation_inputs(n):
            v = n.inputs[i]
            if v is not None and v.name in ranges and fed_by_int8(v):
                lo, hi = ranges[v.name]
                insert_act_qdq(graph, n, i, lo, hi, act_dtype, False)
                done.add(n.name)
    return done


def requantize_int8_outputs(graph: Graph, int8_layers: set[str], ranges, act_dtype) -> set:
    """ONNX Runtime forms QLinearConv only for DQ -> Conv [-> Relu] -> Q; an int8 Conv whose
    result goes on in float (into a residual Add, a pool, a graph output) runs as a float Conv
    that dequantizes its weights on every call. So every reader of such a Conv's result (after
    its Relu, if it has exactly one) gets a Q -> DQ, shared with the Q an int8 reader already
    put there. MatMul/Gemm need none: ORT has float-output integer kernels for them. A result
    that is a graph output is left alone (its name must stay); the report says which got it."""
    done = set()
    for n in [x for x in graph if x.name in int8_layers and x.op_type == "Conv"]:
        lo, hi = ranges.get(n.outputs[0].name, (None, None))
        v = result_after_relu(n)
        if v is not n.outputs[0]:
            lo, hi = ranges.get(v.name, (0.0, max(hi, 0.0) if hi is not None else None))
        if hi is None or v.is_graph_output():
            continue
        for c in [c for c in v.consumers() if c.op_type != "QuantizeLinear"]:
            for i, x in enumerate(c.inputs):
                if x is v:
                    insert_act_qdq(graph, c, i, lo, hi, act_dtype, False)
                    done.add(n.name)
    return done
