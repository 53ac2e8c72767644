"""Reading edgec's INT8 Q/DQ graph for the TOSA lowering, and NPU legality op by op.

Every op of the graph an int8-only device gets (passes.integer_only) reads DQ(int8 x; s, z)
and writes through Q(s_y, z_y); weights are DQ(const int8, per-channel scale, zero point 0).
`check(node, caps, shapes)` says why a node cannot go to the chosen Ethos-U (None when it can;
an empty reason is a bug): an op without a lowering, a float (unquantized) tensor, a shape
Ethos-U does not take (rank > 4, batch > 1, a dim > 65535), or a per-op limit from Vela's
checks (conv stride <= 3, dilation <= 2, kernel area <= 4096, dilated height <= 64; MATMUL of
two activations and general TRANSPOSE on U85 only: U55/U65 are TOSA's `u55` subset).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compiler.ir import Graph, Node, Value, constant_value

__all__ = ["Caps", "LOWERED", "NCHW", "NHWC", "TABLE_OPS", "act_source", "caps_for", "check",
           "compute_nodes", "float_const", "int8_weight", "only_reader", "out_q", "qdq_params",
           "static_shapes"]

NHWC = (0, 2, 3, 1)  # ONNX NCHW axes in NHWC order
NCHW = (0, 3, 1, 2)
TABLE_OPS = frozenset({"Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu"})
_LAYOUT_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Transpose", "Identity"})
LOWERED = frozenset({"Conv", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "Clip",
                     "MaxPool", "AveragePool", "GlobalAveragePool", "Concat"}) | TABLE_OPS | \
    _LAYOUT_OPS


@dataclass(frozen=True)
class Caps:
    """What the chosen Ethos-U accepts (Vela's TOSA checks; U55/U65 are the `u55` subset)."""

    accelerator: str
    matmul: bool  # TOSA MATMUL of two activations (U85)
    transpose: bool  # general TRANSPOSE (U85)
    max_stride: int = 3
    max_dilation: int = 2
    max_kernel_area: int = 4096
    max_dim: int = 65535


def caps_for(accelerator: str) -> Caps:
    u85 = "u85" in accelerator
    return Caps(accelerator, matmul=u85, transpose=u85)


# ------------------------------------------------------------------------------------------
# reading the Q/DQ graph
def qdq_params(node: Node) -> tuple[float, int] | None:
    s, z = constant_value(node.inputs[1]), constant_value(node.inputs[2]) \
        if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if s is None or np.size(s) != 1:
        return None
    return float(np.asarray(s).ravel()[0]), int(np.asarray(z).ravel()[0]) if z is not None \
        else 0


def act_source(v: Value | None) -> tuple[Value, float, int] | None:
    """For a DQ output: (the int8 value it reads, scale, zero point); None if not int8 DQ."""
    p = v.producer if v is not None else None
    if p is None or p.op_type != "DequantizeLinear" or constant_value(p.inputs[0]) is not None:
        return None
    prm = qdq_params(p)
    q = p.inputs[0].producer
    if prm is None or q is None or q.op_type != "QuantizeLinear":
        return None
    if p.inputs[0].dtype not in (3, None):  # onnx INT8
        return None
    return p.inputs[0], prm[0], prm[1]


def out_q(node: Node) -> Node | None:
    """The QuantizeLinear reading `node`'s first result (int8, per tensor)."""
    for c in node.outputs[0].consumers():
        if c.op_type == "QuantizeLinear" and qdq_params(c) is not None and \
                c.outputs[0].dtype in (3, None):
            return c
    return None


def only_reader(q: Node, op_types: tuple[str, ...]) -> Node | None:
    """The single DQ -> op reader of Q `q` when op is in `op_types` (for activation fusion)."""
    dqs = q.outputs[0].consumers()
    if len(dqs) != 1 or dqs[0].op_type != "DequantizeLinear" or \
            dqs[0].outputs[0].is_graph_output():
        return None
    users = dqs[0].outputs[0].consumers()
    if len(users) == 1 and users[0].op_type in op_types and out_q(users[0]) is not None:
        return users[0]
    return None


def int8_weight(v: Value | None) -> tuple[np.ndarray, np.ndarray] | None:
    """(int8 weight, per-channel scales) of DQ(const int8, zero point 0)."""
    p = v.producer if v is not None else None
    if p is None or p.op_type != "DequantizeLinear":
        return None
    q, s = constant_value(p.inputs[0]), constant_value(p.inputs[1])
    z = constant_value(p.inputs[2]) if len(p.inputs) > 2 and p.inputs[2] is not None else None
    if q is None or s is None or q.dtype != np.int8 or (z is not None and np.any(z != 0)):
        return None
    return q, np.asarray(s, np.float64).ravel()


def float_const(v: Value | None) -> np.ndarray | None:
    """A constant float tensor, read through DQ(const) when quantized."""
    if v is None:
        return None
    c = constant_value(v)
    if c is not None:
        return np.asarray(c, np.float64)
    p = v.producer
    if p is not None and p.op_type == "DequantizeLinear":
        q, s = constant_value(p.inputs[0]), constant_value(p.inputs[1])
        z = constant_value(p.inputs[2]) if len(p.inputs) > 2 and p.inputs[2] is not None else 0
        if q is not None and s is not None:
            axis = p.attr("axis", 1)
            s = np.asarray(s, np.float64)
            z = np.asarray(z, np.float64)
            if s.ndim == 1 and q.ndim > 1:
                shape = [1] * q.ndim
                shape[axis] = -1
                s, z = s.reshape(shape), z.reshape(shape) if z.ndim == 1 else z
            return (q.astype(np.float64) - z) * s
    return None


def compute_nodes(graph: Graph) -> list[Node]:
    """The nodes that do work (not Q/DQ, not constant producers)."""
    out = []
    for n in graph:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear", "Constant"):
            continue
        out.append(n)
    return out


def _static(v: Value) -> tuple[int, ...] | None:
    s = v.shape
    if s is None or not all(isinstance(d, int) and d > 0 for d in s):
        return None
    return tuple(s)


# ------------------------------------------------------------------------------------------
# legality
def check(node: Node, caps: Caps, shapes: dict[str, tuple[int, ...]],
          quantized: bool = True) -> str | None:
    """Why `node` cannot run on the NPU (None: it can). `shapes`: static ONNX shapes.
    `quantized` False: a float graph before the int8 lowering (the search asks then): the
    op-level limits only, the Q/DQ form is the precision pass's job."""
    op = node.op_type
    if node.domain:
        return f"custom-domain op {node.domain}::{op} has no TOSA lowering"
    if op not in LOWERED:
        if op == "Softmax":
            return ("Softmax: Vela's TOSA input has no SOFTMAX and edgec does not decompose it "
                    "into TABLE/REDUCE ops yet")
        return f"{op} has no TOSA INT lowering in edgec"
    acts = [v for v in node.inputs if v is not None and float_const(v) is None
            and constant_value(v) is None]
    if op in _LAYOUT_OPS or op == "Concat":
        acts = acts[:len(acts) if op == "Concat" else 1]
    for v in acts if quantized else ():
        if act_source(v) is None:
            return (f"input {v.name!r} is not int8-quantized (no Q/DQ): the NPU computes "
                    "integers only")
    if quantized and out_q(node) is None:
        return (f"result {node.outputs[0].name!r} is not int8-quantized (no Q after it): the "
                "NPU computes integers only")
    for v in acts + [node.outputs[0]]:
        s = shapes.get(v.name)
        if s is None:
            return f"tensor {v.name!r} has no static shape; pass shapes= for the inputs"
        if len(s) > 4:
            return f"tensor {v.name!r} has rank {len(s)}; Ethos-U takes at most 4-D tensors"
        if s and len(s) >= 3 and s[0] != 1:
            return f"batch {s[0]} in {v.name!r}: Ethos-U runs batch 1"
        if any(d > caps.max_dim for d in s):
            return f"a dim of {v.name!r} {s} exceeds {caps.max_dim}"
    weight = int8_weight if quantized else float_const
    if op == "Conv":
        return _check_conv(node, caps, shapes, weight)
    if op in ("Gemm", "MatMul"):
        if weight(node.inputs[1]) is None:
            if op == "MatMul" and (act_source(node.inputs[1]) is not None or not quantized):
                if not caps.matmul:
                    return (f"MatMul of two activations needs TOSA MATMUL, which "
                            f"{caps.accelerator} lacks (Ethos-U85 only)")
                return None
            return f"{op} weight is not a constant int8 tensor with zero point 0"
        if op == "Gemm" and (node.attr("transA", 0) or node.attr("alpha", 1.0) != 1.0 or
                             node.attr("beta", 1.0) != 1.0):
            return "Gemm with transA or alpha/beta != 1 has no lowering"
    if op in ("Add", "Sub"):
        if len(acts) == 1:
            c = float_const(node.inputs[1])
            if c is None or node.inputs[0] is not acts[0]:
                return f"{op} of a constant minus an activation has no lowering"
            if c.ndim > len(shapes[acts[0].name]):
                return f"{op} constant of rank {c.ndim} broadcasts beyond the activation"
            return None
        a, b = (shapes[v.name] for v in acts)
        if a != b:
            return f"{op} with broadcasting ({a} vs {b}) has no lowering"
    if op in ("Mul", "Div"):
        c = float_const(node.inputs[1])
        if len(acts) != 1 or c is None or c.size != 1 or float(c.ravel()[0]) <= 0:
            return (f"{op} is lowered only by a positive scalar constant (a rescale); this one "
                    "multiplies activations or by a tensor/negative constant")
    if op in ("MaxPool", "AveragePool"):
        if node.attr("ceil_mode", 0) or any(d != 1 for d in node.attr("dilations", [1, 1])):
            return f"{op} with ceil_mode or dilation has no TOSA lowering"
        if node.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            return f"{op} auto_pad {node.attr('auto_pad')} is not lowered (give explicit pads)"
        if op == "AveragePool" and node.attr("count_include_pad", 0) and \
                any(node.attr("pads", [0] * 4)):
            return "AveragePool with count_include_pad=1 and padding differs from AVG_POOL2D"
    if op == "Transpose" and not caps.transpose and len(shapes[acts[0].name]) > 2:
        return (f"Transpose of a {len(shapes[acts[0].name])}-D tensor: {caps.accelerator} "
                "has no general TRANSPOSE (Ethos-U85 only)")
    return None


def _check_conv(node: Node, caps: Caps, shapes, weight) -> str | None:
    w = weight(node.inputs[1])
    if w is None:
        return "Conv weight is not a constant int8 tensor with zero point 0 (per-channel)"
    q = w[0] if isinstance(w, tuple) else w
    if q.ndim != 4:
        return f"Conv with a {q.ndim - 2}-D kernel: only 2-D convolutions are lowered"
    g = node.attr("group", 1)
    cin = shapes[node.inputs[0].name][1]
    if g != 1 and not (g == cin and q.shape[1] == 1):
        return f"grouped Conv (group={g}, not depthwise) has no TOSA lowering"
    if node.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        return f"Conv auto_pad {node.attr('auto_pad')} is not lowered (give explicit pads)"
    st, dil = node.attr("strides", [1, 1]), node.attr("dilations", [1, 1])
    if max(st) > caps.max_stride:
        return f"Conv stride {st} > {caps.max_stride} (Ethos-U limit)"
    if max(dil) > caps.max_dilation:
        return f"Conv dilation {dil} > {caps.max_dilation} (Ethos-U limit)"
    kh, kw = q.shape[2:]
    if kh * kw > caps.max_kernel_area:
        return f"Conv kernel {kh}x{kw} exceeds {caps.max_kernel_area} elements (Ethos-U limit)"
    if (kh - 1) * dil[0] + 1 > 64:
        return f"Conv dilated kernel height {(kh - 1) * dil[0] + 1} > 64 (Ethos-U limit)"
    return None


def static_shapes(graph: Graph, inputs: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """ONNX shape inference (with data propagation for Reshape targets) at the given static
    input shapes: value name -> dims, for every value whose dims all come out known."""
    import onnx

    from compiler.onnx_io import export_onnx

    model = export_onnx(graph)
    for vi in model.graph.input:
        if vi.name in inputs:
            dims = vi.type.tensor_type.shape.dim
            for d, n in zip(dims, inputs[vi.name]):
                d.ClearField("dim_param")
                d.dim_value = int(n)
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    out: dict[str, tuple[int, ...]] = {}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in tt.shape.dim)
        if all(d > 0 for d in dims) or dims == ():
            out[vi.name] = dims
    return out
