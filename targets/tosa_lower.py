"""Lowering edgec's INT8 Q/DQ graph to a TOSA 1.0 INT program (NHWC), op by op.

Input: the graph the precision pass ships for an int8-only device (passes.integer_only): every
op reads DQ(int8 x; s_x, z_x) and its result goes through Q(s_y, z_y); weights are int8
per-output-channel (zero point 0), biases int32 at s_x * s_w[c]. Each ONNX op becomes the
integer ops TFLite / ExecuTorch's Arm backend use:

- Conv / depthwise Conv / Gemm, MatMul with a constant weight (as a 1x1 CONV2D):
  acc = sum (x - z_x) * w + b (int32), then RESCALE per channel by r_c = s_x s_w[c] / s_y
  (multiplier/shift, `tosa_ref.quantize_multiplier`) to int8 at z_y; a following Relu/Clip is
  fused as CLAMP to [q(lo), q(hi)] in the output's own scale (q(0) = z_y for Relu);
- Add/Sub of two activations: both inputs RESCALE to int32 at a common scale 2 max(s_a, s_b)
  / 2^20 (20 bits of headroom, TFLite's choice), ADD/SUB in int32, RESCALE to (s_y, z_y);
- Relu / Clip alone: RESCALE to the output's parameters, CLAMP;
- MaxPool: MAX_POOL2D (max commutes with the monotone rescale), then RESCALE if s/z differ;
  AveragePool / GlobalAveragePool: AVG_POOL2D (int32 accumulate, divide with the
  specification's reciprocal) at the input's parameters, then RESCALE if they differ;
- Sigmoid / Tanh / HardSigmoid / HardSwish / LeakyRelu / Elu: TABLE of 256 entries
  q_y(f(s_x (i - z_x))) for i in -128..127;
- Reshape / Flatten / Squeeze / Unsqueeze / Transpose / Concat: RESHAPE, TRANSPOSE (NHWC <->
  ONNX order where a 4-D tensor changes rank), CONCAT after rescaling inputs to the output's
  parameters; MatMul of two activations: TOSA MATMUL (int32), then RESCALE (Ethos-U85 only).

`check(node, caps)` says why a node cannot go to the NPU (an empty reason is a bug);
`lower(graph, nodes, caps)` builds the `IntProgram` for a contiguous run of legal nodes, with
its input/output ports (what the host quantizes, transposes to NHWC, and dequantizes back).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compiler.errors import UnsupportedOpError
from compiler.ir import Graph, Node
from targets.tosa_legality import (
    NCHW,
    NHWC,
    TABLE_OPS,
    Caps,
    act_source,
    caps_for,
    check,
    compute_nodes,
    float_const,
    int8_weight,
    only_reader,
    out_q,
    qdq_params,
    static_shapes,
)
from targets.tosa_ref import quantize_multiplier

__all__ = ["Caps", "IntProgram", "Port", "TOp", "TTensor", "caps_for", "check", "lower",
           "compute_nodes", "static_shapes"]


@dataclass
class TTensor:
    name: str
    shape: tuple[int, ...]
    dtype: str  # int8 | int32 | shape
    data: np.ndarray | None = None


@dataclass
class TOp:
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # the ONNX node it came from


@dataclass
class Port:
    """An NPU input/output as the host sees it: the float ONNX value, its int8 parameters and
    whether the NPU holds it in NHWC (a 4-D ONNX NCHW tensor)."""

    tensor: str
    onnx: str
    scale: float
    zero_point: int
    nhwc: bool
    onnx_shape: tuple[int, ...]

    def quantize(self, x: np.ndarray) -> np.ndarray:
        q = np.clip(np.round(np.asarray(x, np.float32) / np.float32(self.scale)) +
                    self.zero_point, -128, 127).astype(np.int8)
        return np.ascontiguousarray(q.transpose(NHWC)) if self.nhwc else q

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        q = q.transpose(NCHW) if self.nhwc else q
        return ((q.astype(np.float32) - self.zero_point) * np.float32(self.scale)).astype(
            np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"tensor": self.tensor, "onnx": self.onnx, "scale": self.scale,
                "zero_point": self.zero_point, "layout": "NHWC" if self.nhwc else "as ONNX",
                "onnx_shape": list(self.onnx_shape)}


@dataclass
class IntProgram:
    tensors: dict[str, TTensor] = field(default_factory=dict)
    ops: list[TOp] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    ports_in: list[Port] = field(default_factory=list)
    ports_out: list[Port] = field(default_factory=list)


@dataclass
class _Q:
    """A quantized activation in the program: tensor, parameters, ONNX shape, NHWC flag."""

    tensor: str
    scale: float
    zp: int
    shape: tuple[int, ...]  # ONNX order

    @property
    def nhwc(self) -> bool:
        return len(self.shape) == 4

    @property
    def tshape(self) -> tuple[int, ...]:
        return tuple(self.shape[i] for i in NHWC) if self.nhwc else self.shape


# ------------------------------------------------------------------------------------------
# lowering
class _Builder:
    def __init__(self, graph: Graph, shapes: dict[str, tuple[int, ...]]) -> None:
        self.p = IntProgram()
        self.shapes = shapes
        self.q: dict[str, _Q] = {}  # int8 ONNX value (Q output) -> program tensor
        self.n = 0
        self.src = ""

    def tensor(self, shape, dtype: str, data: np.ndarray | None = None, hint: str = "t") -> str:
        self.n += 1
        name = f"{hint}_{self.n}"
        self.p.tensors[name] = TTensor(name, tuple(int(d) for d in shape), dtype, data)
        return name

    def const(self, arr: np.ndarray, dtype: str, hint: str = "c") -> str:
        np_dt = {"int8": np.int8, "int16": np.int16, "int32": np.int32}[dtype]
        arr = np.asarray(arr).astype(np_dt)
        return self.tensor(arr.shape, dtype, arr, hint)

    def op(self, kind: str, inputs: list[str], out_shape, dtype: str, **attrs) -> str:
        out = self.tensor(out_shape, dtype, hint=kind.lower())
        self.p.ops.append(TOp(kind, list(inputs), [out], attrs, self.src))
        return out

    def zp(self, z: int, dtype: str = "int8") -> str:
        return self.const(np.array([z]), dtype, "zp")

    def rescale(self, x: str, shape, scale, in_zp: int, out_zp: int, in_dt: str = "int8",
                out_dt: str = "int8") -> str:
        scales = np.atleast_1d(np.asarray(scale, np.float64))
        ms = [quantize_multiplier(float(r)) for r in scales]
        mult = self.const(np.array([m for m, _ in ms]), "int32", "mult")
        shift = self.const(np.array([s for _, s in ms]), "int8", "shift")
        return self.op("RESCALE", [x, mult, shift, self.zp(in_zp, in_dt),
                                   self.zp(out_zp, out_dt)], shape, out_dt, out=out_dt,
                       per_channel=scales.size > 1)

    def clamp(self, x: str, shape, act: Node | None, scale: float, zp: int) -> str:
        """CLAMP for a fused Relu/Clip `act` (nothing when it clips no int8 value)."""
        lo, hi = _clamp_bounds(act, scale, zp)
        if (lo, hi) == (-128, 127):
            return x
        return self.op("CLAMP", [x], shape, "int8", min=lo, max=hi)

    def requant(self, a: _Q, scale: float, zp: int) -> str:
        """`a` at (scale, zp): no op when equal."""
        if np.float32(a.scale) == np.float32(scale) and a.zp == zp:
            return a.tensor
        return self.rescale(a.tensor, a.tshape, a.scale / scale, a.zp, zp)

    def to_layout(self, a: _Q, tensor: str, want_nhwc: bool) -> tuple[str, tuple[int, ...]]:
        """`tensor` (holding `a`) in ONNX order (want_nhwc False) for reshapes."""
        if a.nhwc and not want_nhwc and any(d != 1 for d in a.shape[2:]):
            return self.op("TRANSPOSE", [tensor], a.shape, "int8", perms=list(NCHW)), a.shape
        if a.nhwc and not want_nhwc:  # [N, C, 1, 1] is the same memory as [N, 1, 1, C]
            return self.op("RESHAPE", [tensor], a.shape, "int8", shape=list(a.shape)), a.shape
        return tensor, a.tshape


def _exact_pad(hw, kernel, stride, dil, pad) -> list[int]:
    """TOSA wants (in - 1 + pads - (k - 1) d) divisible by the stride: drop the bottom/right
    padding rows a strided window never reads (ONNX floors, so they never reach the output)."""
    pad = list(pad)
    for i, (n, k, s, d) in enumerate(zip(hw, kernel, stride, dil)):
        r = (n - 1 + pad[2 * i] + pad[2 * i + 1] - (k - 1) * d) % s
        pad[2 * i + 1] -= min(r, pad[2 * i + 1])
    return pad


def _clamp_bounds(act: Node | None, scale: float, zp: int) -> tuple[int, int]:
    lo, hi = -128, 127
    if act is None:
        return lo, hi
    if act.op_type == "Relu":
        return max(lo, zp), hi
    mn = float_const(act.inputs[1]) if len(act.inputs) > 1 else None
    mx = float_const(act.inputs[2]) if len(act.inputs) > 2 else None
    mn = float(mn) if mn is not None else act.attr("min", None)
    mx = float(mx) if mx is not None else act.attr("max", None)
    if mn is not None:
        lo = max(lo, int(np.round(mn / scale)) + zp)
    if mx is not None:
        hi = min(hi, int(np.round(mx / scale)) + zp)
    return lo, hi


def _table(op: Node, a: _Q, scale: float, zp: int) -> np.ndarray:
    x = (np.arange(-128, 128, dtype=np.float64) - a.zp) * a.scale
    if op.op_type == "Sigmoid":
        y = 1 / (1 + np.exp(-x))
    elif op.op_type == "Tanh":
        y = np.tanh(x)
    elif op.op_type == "HardSigmoid":
        y = np.clip(op.attr("alpha", 0.2) * x + op.attr("beta", 0.5), 0, 1)
    elif op.op_type == "HardSwish":
        y = x * np.clip(x / 6 + 0.5, 0, 1)
    elif op.op_type == "LeakyRelu":
        y = np.where(x >= 0, x, op.attr("alpha", 0.01) * x)
    else:  # Elu
        y = np.where(x >= 0, x, op.attr("alpha", 1.0) * (np.exp(x) - 1))
    return np.clip(np.round(y / scale) + zp, -128, 127).astype(np.int8)


def lower(graph: Graph, nodes: list[Node], caps: Caps,
          shapes: dict[str, tuple[int, ...]]) -> IntProgram:
    """The TOSA program of the legal compute `nodes` (a contiguous run in graph order)."""
    b = _Builder(graph, shapes)
    inside = {id(n) for n in nodes}
    fused: set[int] = set()
    for node in nodes:
        if id(node) in fused:
            continue
        b.src = node.name
        ins: list[_Q] = []
        for v in node.inputs:
            src = act_source(v)
            if src is None:
                continue
            qv, s, z = src
            if qv.name not in b.q:  # produced outside: an NPU input the host quantizes
                x = qv.producer.inputs[0]
                shape = shapes[x.name]
                qa = _Q("", s, z, shape)
                qa.tensor = b.tensor(qa.tshape, "int8", hint="input")
                b.p.inputs.append(qa.tensor)
                b.p.ports_in.append(Port(qa.tensor, x.name, s, z, qa.nhwc, shape))
                b.q[qv.name] = qa
            ins.append(b.q[qv.name])
        q = out_q(node)
        act = only_reader(q, ("Relu", "Clip")) if node.op_type in ("Conv", "Gemm", "MatMul",
                                                                    "Add", "Sub") else None
        if act is not None and id(act) not in inside:
            act = None
        final_q = out_q(act) if act is not None else q
        s_y, z_y = qdq_params(final_q)
        y_shape = shapes[node.outputs[0].name]
        out = _lower_one(b, node, ins, s_y, z_y, y_shape, act)
        if act is not None:
            fused.add(id(act))
        b.q[final_q.outputs[0].name] = _Q(out, s_y, z_y, y_shape)
    # outputs: int8 values whose DQ is read outside the run (or is a graph output)
    by_name = {x.name: x for x in graph.values()}
    for name, qa in b.q.items():
        if qa.tensor in b.p.inputs:
            continue
        v = by_name.get(name)
        for dq in (v.consumers() if v is not None else []):
            if dq.op_type != "DequantizeLinear":
                continue
            f = dq.outputs[0]
            if f.is_graph_output() or any(id(c) not in inside and
                                          c.op_type not in ("QuantizeLinear",)
                                          for c in f.consumers()):
                b.p.outputs.append(qa.tensor)
                b.p.ports_out.append(Port(qa.tensor, f.name, qa.scale, qa.zp, qa.nhwc,
                                          qa.shape))
                break
    if not b.p.outputs:
        raise UnsupportedOpError("the NPU part has no output read by the host")
    return b.p


def _conv_like(b: _Builder, node: Node, a: _Q, s_y, z_y, y_shape, act) -> str:
    q, ws = int8_weight(node.inputs[1])
    bias_f = float_const(node.inputs[2]) if len(node.inputs) > 2 else None
    if node.op_type == "Conv":
        m = q.shape[0]
        ws = np.broadcast_to(ws, (m,))
        pads = node.attr("pads", [0, 0, 0, 0])
        st, dil = list(node.attr("strides", [1, 1])), list(node.attr("dilations", [1, 1]))
        attrs = dict(pad=_exact_pad(a.shape[2:], q.shape[2:], st, dil,
                                    [pads[0], pads[2], pads[1], pads[3]]),
                     stride=st, dilation=dil)
        depthwise = node.attr("group", 1) != 1
        if depthwise:
            c = a.shape[1]
            w = q.reshape(c, m // c, *q.shape[2:]).transpose(2, 3, 0, 1)
        else:
            w = q.transpose(0, 2, 3, 1)
        x, y_t = a.tensor, tuple(y_shape[i] for i in NHWC)
        kind = "DEPTHWISE_CONV2D" if depthwise else "CONV2D"
    else:  # FC as a 1x1 conv on [1, 1, rows, K]
        w2 = q if (node.op_type == "Gemm" and node.attr("transB", 0)) else q.T
        m, k = w2.shape
        ws = np.broadcast_to(ws, (m,))
        w = w2.reshape(m, 1, 1, k)
        x, shp = b.to_layout(a, a.tensor, False)
        rows = int(np.prod(shp[:-1]))
        x = b.op("RESHAPE", [x], (1, 1, rows, k), "int8", shape=[1, 1, rows, k])
        attrs = dict(pad=[0, 0, 0, 0], stride=[1, 1], dilation=[1, 1])
        y_t = (1, 1, rows, m)
        kind = "CONV2D"
    acc_scale = a.scale * ws
    bias = np.zeros(m, np.int64) if bias_f is None else np.round(
        np.broadcast_to(bias_f.ravel(), (m,)) / acc_scale).astype(np.int64)
    acc = b.op(kind, [x, b.const(w, "int8", "weight"), b.const(bias, "int32", "bias"),
                      b.zp(a.zp), b.zp(0)], y_t, "int32", **attrs)
    r = b.clamp(b.rescale(acc, y_t, acc_scale / s_y, 0, z_y, "int32"), y_t, act, s_y, z_y)
    if node.op_type != "Conv":
        r = b.op("RESHAPE", [r], y_shape, "int8", shape=list(y_shape))
    return r


def _lower_one(b: _Builder, node: Node, ins: list[_Q], s_y: float, z_y: int,
               y_shape: tuple[int, ...], act: Node | None) -> str:
    op = node.op_type
    y = _Q("", s_y, z_y, y_shape)
    if op == "Conv" or (op in ("Gemm", "MatMul") and int8_weight(node.inputs[1]) is not None):
        return _conv_like(b, node, ins[0], s_y, z_y, y_shape, act)
    if op == "MatMul":  # two activations, [.., M, K] x [.., K, N] -> MATMUL on [B, M, K]
        a, c = ins
        sa, sc = a.shape, c.shape
        bt = int(np.prod(sa[:-2])) if len(sa) > 2 else 1
        xa = b.op("RESHAPE", [b.to_layout(a, a.tensor, False)[0]], (bt, sa[-2], sa[-1]),
                  "int8", shape=[bt, sa[-2], sa[-1]])
        xc = b.op("RESHAPE", [b.to_layout(c, c.tensor, False)[0]], (bt, sc[-2], sc[-1]),
                  "int8", shape=[bt, sc[-2], sc[-1]])
        acc = b.op("MATMUL", [xa, xc, b.zp(a.zp), b.zp(c.zp)], (bt, sa[-2], sc[-1]), "int32")
        r = b.rescale(acc, (bt, sa[-2], sc[-1]), a.scale * c.scale / s_y, 0, z_y, "int32")
        return b.op("RESHAPE", [r], y.tshape, "int8", shape=list(y.tshape))
    if op in ("Mul", "Div"):
        k = float(float_const(node.inputs[1]).ravel()[0])
        k = k if op == "Mul" else 1.0 / k
        return b.rescale(ins[0].tensor, ins[0].tshape, ins[0].scale * k / s_y, ins[0].zp, z_y)
    if op in ("Add", "Sub"):  # both sides in int32 at a common scale (a constant too)
        a = ins[0]
        cf = float_const(node.inputs[1]) if len(ins) == 1 else None
        if cf is None:
            common = 2 * max(a.scale, ins[1].scale) / (1 << 20)
            xc = b.rescale(ins[1].tensor, ins[1].tshape, ins[1].scale / common, ins[1].zp, 0,
                           "int8", "int32")
        else:
            common = max(2 * a.scale / (1 << 20), float(np.max(np.abs(cf), initial=0)) / 2**30)
            cf = cf.reshape((1,) * (len(a.shape) - cf.ndim) + cf.shape)
            cf = cf.transpose(NHWC) if a.nhwc else cf
            xc = b.const(np.round(cf / common).astype(np.int64), "int32", "addend")
        xa = b.rescale(a.tensor, a.tshape, a.scale / common, a.zp, 0, "int8", "int32")
        acc = b.op(op.upper(), [xa, xc], a.tshape, "int32")
        r = b.rescale(acc, a.tshape, common / s_y, 0, z_y, "int32")
        return b.clamp(r, a.tshape, act, s_y, z_y)
    a = ins[0]
    if op in ("Relu", "Clip"):
        r = b.requant(a, s_y, z_y)
        lo, hi = _clamp_bounds(node, s_y, z_y)
        return b.op("CLAMP", [r], y.tshape, "int8", min=lo, max=hi)
    if op in TABLE_OPS:
        return b.op("TABLE", [a.tensor, b.const(_table(node, a, s_y, z_y), "int8", "table")],
                    y.tshape, "int8")
    if op in ("MaxPool", "AveragePool", "GlobalAveragePool"):
        if op == "GlobalAveragePool":
            kernel, stride, pad = list(a.shape[2:]), [1, 1], [0, 0, 0, 0]
        else:
            kernel = list(node.attr("kernel_shape"))
            stride = list(node.attr("strides", [1, 1]))
            p = node.attr("pads", [0, 0, 0, 0])
            pad = _exact_pad(a.shape[2:], kernel, stride, (1, 1), [p[0], p[2], p[1], p[3]])
        if op == "MaxPool":
            r = b.op("MAX_POOL2D", [a.tensor], y.tshape, "int8", kernel=kernel, stride=stride,
                     pad=pad)
        else:
            r = b.op("AVG_POOL2D", [a.tensor, b.zp(a.zp), b.zp(a.zp)], y.tshape, "int8",
                     kernel=kernel, stride=stride, pad=pad)
        return b.requant(_Q(r, a.scale, a.zp, y_shape), s_y, z_y)
    if op == "Concat":
        axis = node.attr("axis", 0) % len(y_shape)
        parts = [b.requant(x, s_y, z_y) for x in ins]
        t_axis = NHWC.index(axis) if y.nhwc else axis
        return b.op("CONCAT", parts, y.tshape, "int8", axis=t_axis)
    if op == "Transpose":
        perm = list(node.attr("perm", list(range(len(a.shape)))[::-1]))
        inp = NCHW if a.nhwc else tuple(range(len(a.shape)))
        outp = NHWC if y.nhwc else tuple(range(len(y_shape)))
        perms = [inp[perm[outp[m]]] for m in range(len(y_shape))]
        r = b.op("TRANSPOSE", [a.tensor], y.tshape, "int8", perms=perms)
        return b.requant(_Q(r, a.scale, a.zp, y_shape), s_y, z_y)
    # Reshape / Flatten / Squeeze / Unsqueeze / Identity
    x, _ = b.to_layout(a, a.tensor, False)
    r = b.op("RESHAPE", [x], y_shape, "int8", shape=list(y_shape))
    if y.nhwc and any(d != 1 for d in y_shape[2:]):
        r = b.op("TRANSPOSE", [r], y.tshape, "int8", perms=list(NHWC))
    elif y.nhwc:
        r = b.op("RESHAPE", [r], y.tshape, "int8", shape=list(y.tshape))
    return b.requant(_Q(r, a.scale, a.zp, y_shape), s_y, z_y)

