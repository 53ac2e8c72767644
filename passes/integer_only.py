"""Quantize every activation, for devices that compute in integers only (Arm Ethos-U).

The precision lowering (passes.quantize) puts Q -> DQ only on the inputs of Conv/MatMul/Gemm:
the ops between them (Relu, Add, pools, reshapes) stay float, which a CPU runs but an NPU with
no float unit cannot. On an int8-only device every float activation tensor x (graph inputs and
node outputs) gets its own per-tensor Q -> DQ from its calibrated range [lo, hi]:

    s = (hi - lo) / 255,  z = -128 - round(lo / s)     (int8, asymmetric; [lo, hi] widened to 0)

shared by all its readers, so an integer backend reads every op as DQ -> op -> Q and knows the
scale and zero point of each input and output (the form TFLite and ExecuTorch's Arm quantizer
produce). A graph output keeps its name: its producer writes a renamed value that goes through
Q -> DQ into the output. Values already quantized (a Q reads them) keep their Q; the other
readers are moved onto its DQ.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx

from compiler.ir import Graph, Node, Value, dtype_to_numpy
from passes import quantize as qz

__all__ = ["activation_values", "quantize_all_activations"]

T = onnx.TensorProto
_SKIP = frozenset({"QuantizeLinear", "DequantizeLinear", "Shape", "Constant"})


def activation_values(graph: Graph) -> list[Value]:
    """Float, non-constant tensors an integer device must hold: graph inputs, node outputs."""
    out = [v for v in graph.inputs if v.const is None and v.dtype in (T.FLOAT, None)]
    for n in graph:
        if n.op_type in _SKIP or n.domain:
            continue
        out += [v for v in n.outputs if v.name and v.dtype in (T.FLOAT, None)
                and v.const is None]
    return out


def _existing_dq(v: Value) -> Value | None:
    for q in v.consumers():
        if q.op_type == "QuantizeLinear":
            for dq in q.outputs[0].consumers():
                if dq.op_type == "DequantizeLinear":
                    return dq.outputs[0]
    return None


def _output_qdq(graph: Graph, v: Value, lo: float, hi: float, dtype: int) -> None:
    """Graph output `v`: its producer writes `v_float`, which Q -> DQ turn into `v`."""
    p = v.producer
    assert p is not None
    new = Value(graph.unique_name(v.name + "_float"), v.dtype, v.shape)
    new.producer, new.index, new.graph = p, v.index, graph
    p.outputs[v.index] = new
    for c, i in list(v.uses):
        c.set_input(i, new)
    scale, zp = qz.act_qparams(lo, hi, dtype)
    s = graph.make_constant(np.array(scale, np.float32), v.name + "/scale")
    z = graph.make_constant(np.array(zp, dtype_to_numpy(dtype)), v.name + "/zero_point")
    qv = Value(graph.unique_name(v.name + "/q"), dtype, v.shape)
    q = Node("QuantizeLinear", [new, s, z], [qv], name=graph.unique_name(v.name + "_q"))
    dq = Node("DequantizeLinear", [qv, s, z], [v], name=graph.unique_name(v.name + "_dq"))
    graph.insert_after(p, [q, dq])


def quantize_all_activations(graph: Graph, ranges: Mapping[str, tuple[float, float]],
                             dtype: int = T.INT8) -> int:
    """Give every activation in `ranges` a Q -> DQ (see the module docstring). Returns how
    many tensors got one."""
    done = 0
    for v in activation_values(graph):
        if v.name not in ranges:
            continue
        lo, hi = ranges[v.name]
        dq = _existing_dq(v)
        readers = [(c, i) for c, i in list(v.uses) if c.op_type != "QuantizeLinear"]
        if dq is not None:
            for c, i in readers:
                c.set_input(i, dq)
        elif readers:
            for c, i in readers:
                qz.insert_act_qdq(graph, c, i, lo, hi, dtype)
            done += 1
        if v.is_graph_output() and v.producer is not None and \
                v.producer.op_type != "DequantizeLinear":
            _output_qdq(graph, v, lo, hi, dtype)
            done += 1 if not readers else 0
    return done
