"""Lowering a precision choice into the graph: Q/DQ for INT8 and INT4, Cast for FP16/BF16.

Precision lives in the graph (DESIGN.md): every backend (ONNX Runtime, OpenVINO, TVM, TensorRT)
reads these standard patterns and picks its own kernels; no backend gets a side table.

INT8 (Conv, MatMul, Gemm), the QDQ form ONNX Runtime's `quantize_static` and TensorRT use:

- weights, per output channel c, symmetric:  s_c = max|W_c| / q_max,  W_q = clip(round(W/s_c))
  stored as int8 and read through `DequantizeLinear(axis=channel axis)`; q_max = 127, or 63
  with `reduce_range` (7-bit weights avoid the u8*s8 pair-sum saturation of AVX2's vpmaddubsw on
  CPUs without VNNI);
- activations, per tensor:  s = (hi - lo) / (q_hi - q_lo),  z = q_lo - round(lo / s), with
  [lo, hi] from calibration widened to contain 0 (so zero padding is exact); uint8 asymmetric by
  default, int8 symmetric (z = 0) for TensorRT. One Q -> DQ pair per tensor, placed right after
  its producer and shared by every quantized reader;
- bias (Conv input 2, Gemm C of length N): int32 with scale s_x * s_c, zero point 0, so ONNX
  Runtime can fuse the group into QLinearConv / QGemm;
- with `input_mean` (the calibrated per-channel mean of the layer's input), the bias first
  absorbs the mean output shift the weight rounding causes (passes.bias_correction).

INT4 weight-only (MatMul/Gemm with a constant [K, N] weight): per block of `block_size` rows of
K and per column n, s = max|W| / 7, W_q = clip(round(W/s), -8, 7). Emitted as
`DequantizeLinear(int4, axis=0, block_size)` when the model's opset is >= 21 (ONNX Runtime and
OpenVINO both read it), else as com.microsoft `MatMulNBits` (4-bit, zero point 8), which both
also read, so an opset-17 model is not upgraded behind the user's back.

FP16 / BF16: the layer's float inputs are Cast (weights converted offline), its output is Cast
back to float32; `fold_cast_pairs` then removes Cast(f16->f32)->Cast(f32->f16) round trips,
which are exact, so a chain of half-precision layers stays in half precision between them.
"""

from __future__ import annotations

import numpy as np
import onnx

from compiler.ir import Graph, Node, Value
from compiler.ir import constant_value as const_array  # re-exported for precision passes
from passes import bias_correction as bc

__all__ = [
    "QUANTIZABLE",
    "KEEP_FLOAT",
    "act_qparams",
    "activation_inputs",
    "fold_cast_pairs",
    "lower_float",
    "lower_int4_weight",
    "lower_int8",
    "quantize_weight",
    "weight_axis",
    "weight_input",
]

T = onnx.TensorProto
QUANTIZABLE = frozenset({"Conv", "MatMul", "Gemm"})
KEEP_FLOAT = frozenset({"Softmax", "LayerNormalization", "ReduceMean", "Exp", "Log", "Pow",
                        "Sqrt", "Div", "Erf", "Gelu", "InstanceNormalization"})
FLOAT_TYPES = {"fp16": T.FLOAT16, "bf16": T.BFLOAT16}
_QDQ_TAG = "edgec_qdq"


def weight_input(node: Node) -> int | None:
    """Index of the constant weight input of a Conv/MatMul/Gemm, else None."""
    if node.op_type in ("Conv", "Gemm", "MatMul") and len(node.inputs) > 1:
        w = const_array(node.inputs[1])
        if w is not None and w.ndim >= 2 and w.dtype == np.float32:
            return 1
    return None


def weight_axis(node: Node) -> int:
    """Axis of the weight holding output channels: Conv [M,C,kh,kw] 0, MatMul [K,N] last,
    Gemm B [K,N] 1 or [N,K] 0 with transB."""
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if node.attr("transB", 0) else 1
    w = const_array(node.inputs[1])
    return (w.ndim - 1) if w is not None else 1


def activation_inputs(node: Node) -> list[int]:
    """Input indices read as activations (quantized per tensor)."""
    idx = [0]
    if node.op_type in ("MatMul", "Gemm") and weight_input(node) is None:
        idx.append(1)
    return idx


def act_qparams(lo: float, hi: float, dtype: int = T.UINT8,
                symmetric: bool = False) -> tuple[float, int]:
    """(scale, zero_point) mapping [lo, hi] (widened to include 0) onto the integer range."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if symmetric:
        m = max(abs(lo), abs(hi))
        scale = m / 127.0 if m > 0 else 1.0
        return float(np.float32(scale)), 128 if dtype == T.UINT8 else 0
    qlo, qhi = (0, 255) if dtype == T.UINT8 else (-128, 127)
    scale = (hi - lo) / (qhi - qlo) if hi > lo else 1.0
    scale = float(np.float32(scale))
    zp = int(np.clip(round(qlo - lo / scale), qlo, qhi))
    return scale, zp


def quantize_weight(w: np.ndarray, axis: int, qmax: int = 127
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel: (int8 weights, float32 scales of length w.shape[axis])."""
    red = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.max(np.abs(w), axis=red).astype(np.float32)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.round(w / scale.reshape(shape)), -qmax - (qmax == 127), qmax)
    return q.astype(np.int8), scale


# ---------------------------------------------------------------------------------------------
# graph helpers
def _node(graph: Graph, op: str, inputs: list[Value | None], dtype: int | None,
          shape, hint: str, **attrs) -> Node:
    out = Value(graph.unique_name(hint), dtype, shape)
    n = Node(op, inputs, [out], name=graph.unique_name(hint.split("/")[-1] + "_" + op))
    for k, v in attrs.items():
        n.set_attr(k, v)
    return n


def _place_after(graph: Graph, v: Value, nodes: list[Node]) -> None:
    """Insert `nodes` right after the producer of `v` (or at the top for inputs/initializers)."""
    p = v.producer
    if p is not None and p.graph is graph:
        graph.insert_after(p, nodes)
    else:
        head = next(iter(graph), None)
        if head is None:
            graph.extend(nodes)
        else:
            graph.insert_before(head, nodes)


def _shared_qdq(graph: Graph, v: Value, scale: float, zp: int, dtype: int) -> Value | None:
    for q in v.consumers():
        if q.op_type == "QuantizeLinear" and q.meta.get(_QDQ_TAG) == (scale, zp, dtype):
            for dq in q.outputs[0].consumers():
                if dq.op_type == "DequantizeLinear":
                    return dq.outputs[0]
    return None


def insert_act_qdq(graph: Graph, node: Node, i: int, lo: float, hi: float,
                   dtype: int = T.UINT8, symmetric: bool = False) -> tuple[float, int]:
    """Q -> DQ on input `i` of `node` (shared per tensor); returns (scale, zero_point)."""
    v = node.inputs[i]
    assert v is not None
    scale, zp = act_qparams(lo, hi, dtype, symmetric)
    out = _shared_qdq(graph, v, scale, zp, dtype)
    if out is None:
        npdt = np.uint8 if dtype == T.UINT8 else np.int8
        s = graph.make_constant(np.array(scale, np.float32), v.name + "/scale")
        z = graph.make_constant(np.array(zp, npdt), v.name + "/zero_point")
        q = _node(graph, "QuantizeLinear", [v, s, z], dtype, v.shape, v.name + "/q")
        dq = _node(graph, "DequantizeLinear", [q.outputs[0], s, z], T.FLOAT, v.shape,
                   v.name + "/dq")
        q.meta[_QDQ_TAG] = (scale, zp, dtype)
        _place_after(graph, v, [q, dq])
        out = dq.outputs[0]
    node.set_input(i, out)
    return scale, zp


def _dq_const(graph: Graph, node: Node, q: np.ndarray, scale: np.ndarray, zp: np.ndarray,
              axis: int | None, hint: str, **attrs) -> Value:
    qv = graph.make_constant(q, hint + "_quantized")
    sv = graph.make_constant(scale, hint + "_scale")
    zv = graph.make_constant(zp, hint + "_zero_point")
    kw = dict(attrs)
    if axis is not None:
        kw["axis"] = axis
    dq = _node(graph, "DequantizeLinear", [qv, sv, zv], T.FLOAT, tuple(q.shape), hint + "/dq",
               **kw)
    graph.insert_before(node, dq)
    return dq.outputs[0]


def _int32_bias(graph: Graph, reader: Node, i: int, b: np.ndarray, bs: np.ndarray) -> bool:
    """Give input `i` of `reader` (the float bias `b`) as DequantizeLinear(int32 round(b / bs),
    bs) along axis 0; False (nothing changed) where a scale is 0 or int32 would overflow."""
    qb = np.round(b.astype(np.float64) / bs)
    if not (np.all(bs > 0) and np.all(np.abs(qb) < 2**31 - 1)):
        return False
    bv = reader.inputs[i]
    reader.set_input(i, _dq_const(graph, reader, qb.astype(np.int32), bs,
                                  np.zeros(bs.shape, np.int32), 0, bv.name))
    graph.drop_if_unused(bv)
    return True


# ---------------------------------------------------------------------------------------------
# lowerings
def lower_int8(graph: Graph, node: Node, ranges: dict[str, tuple[float, float]], *,
               act_dtype: int = T.UINT8, symmetric_act: bool = False,
               reduce_range: bool = False, input_mean: np.ndarray | None = None) -> dict:
    """Quantize one Conv/MatMul/Gemm: per-channel int8 weight, per-tensor activations, int32
    bias. `ranges` maps activation value names to calibrated (lo, hi); `input_mean`, the mean
    of input 0 per channel (`bias_correction.input_mean_axis`), turns on bias correction.
    Returns the params (with "bias_correction", the correction's record, when it ran)."""
    info: dict = {"activations": {}}
    scales = {}
    for i in activation_inputs(node):
        v = node.inputs[i]
        lo, hi = ranges[v.name]
        scales[i] = insert_act_qdq(graph, node, i, lo, hi, act_dtype, symmetric_act)
        info["activations"][v.name] = {"scale": scales[i][0], "zero_point": scales[i][1]}
    wi = weight_input(node)
    if wi is not None:
        wv = node.inputs[wi]
        w = np.asarray(const_array(wv), np.float32)
        axis = weight_axis(node)
        q, ws = quantize_weight(w, axis, 63 if reduce_range else 127)
        node.set_input(wi, _dq_const(graph, node, q, ws, np.zeros_like(ws, np.int8), axis,
                                     wv.name))
        graph.drop_if_unused(wv)
        info["weight"] = {"axis": axis, "channels": int(ws.size), "bits": 7 if reduce_range
                          else 8}
        shift = None
        if input_mean is not None:
            shape = [1] * w.ndim
            shape[axis] = -1
            shift = bc.weight_shift(node, w, q.astype(np.float32) * ws.reshape(shape),
                                    input_mean)
            info["bias_correction"] = bc.fold_shift(graph, node, shift) if shift is not None \
                else {"corrected": False, "why": "the input mean does not match the weight"}
        bi = 2 if node.op_type in ("Conv", "Gemm") and len(node.inputs) > 2 else None
        b = const_array(node.inputs[bi]) if bi is not None else None
        if b is not None and b.ndim == 1 and b.size == ws.size and \
                (node.op_type == "Conv" or node.attr("beta", 1.0) == 1.0):
            bs = (ws * np.float32(scales[0][0])).astype(np.float32)
            if _int32_bias(graph, node, bi, b, bs):
                info["bias"] = "int32"
                if shift is not None and info["bias_correction"]["corrected"]:
                    info["bias_correction"]["max_shift_in_bias_steps"] = float(
                        np.max(np.abs(shift) / bs, initial=0.0))
    node.meta["precision"] = "int8"
    return info


def int32_bias_add(graph: Graph, node: Node) -> bool:
    """For an int8 MatMul followed by `Add(result, b)` with a constant per-column bias b [N]:
    give b as DequantizeLinear(int32, scale = input scale x weight scale per column), the form
    ONNX Runtime needs to fuse the pair into an integer Gemm (QGemm) even when the result stays
    float. Exact up to the bias rounding (|error| <= scale / 2). Returns whether it did."""
    x, w = (node.inputs[i].producer if node.inputs[i] is not None else None for i in (0, 1))
    if node.op_type != "MatMul" or x is None or w is None or x.op_type != "DequantizeLinear" \
            or w.op_type != "DequantizeLinear" or w.attr("axis", 1) not in (1, -1):
        return False
    xs, ws, wq = const_array(x.inputs[1]), const_array(w.inputs[1]), const_array(w.inputs[0])
    if xs is None or ws is None or wq is None or np.ndim(xs) != 0 or wq.ndim != 2:
        return False
    add, bi, b = bc.bias_add(node, wq.shape[-1])
    if add is None or b.ndim != 1 or np.size(ws) not in (1, b.size):
        return False
    bs = (np.broadcast_to(np.asarray(ws, np.float32), b.shape) * np.float32(xs)).astype(
        np.float32)
    return _int32_bias(graph, add, bi, b, bs)


def result_after_relu(node: Node) -> Value:
    """`node`'s result, or its Relu's when that Relu is its only reader (and the result is not
    a graph output): the value whose Q turns DQ -> node [-> Relu] -> Q into an integer kernel."""
    v = node.outputs[0]
    users = v.consumers()
    if len(users) == 1 and users[0].op_type == "Relu" and not v.is_graph_output():
        return users[0].outputs[0]
    return v


def lower_float(graph: Graph, node: Node, precision: str) -> None:
    """Run `node` in fp16/bf16: cast float inputs (weights offline), cast the output back."""
    elem = FLOAT_TYPES[precision]
    for i, v in enumerate(node.inputs):
        if v is None or v.dtype not in (None, T.FLOAT):
            continue
        arr = const_array(v)
        if arr is not None:
            if arr.dtype != np.float32:
                continue
            if elem == T.FLOAT16:
                nv = graph.make_constant(arr.astype(np.float16), v.name + "_fp16")
            else:
                import ml_dtypes

                nv = graph.make_constant(arr.astype(ml_dtypes.bfloat16), v.name + "_bf16")
            node.set_input(i, nv)
            graph.drop_if_unused(v)
        else:
            c = _node(graph, "Cast", [v], elem, v.shape, v.name + "/" + precision, to=elem)
            graph.insert_before(node, c)
            node.set_input(i, c.outputs[0])
    for k, old in enumerate(node.outputs):
        if old.dtype not in (None, T.FLOAT) or not old.name:
            continue
        new = Value(graph.unique_name(old.name + "_" + precision), elem, old.shape)
        new.producer, new.index, new.graph = node, k, graph
        node.outputs[k] = new
        back = Node("Cast", [new], [old], name=graph.unique_name(node.name + "_to_fp32"))
        back.set_attr("to", T.FLOAT)
        graph.insert_after(node, back)
    node.meta["precision"] = precision


def fold_cast_pairs(graph: Graph) -> int:
    """Remove exact round trips Cast(h->f32) -> Cast(f32->h) for h in {fp16, bf16}."""
    removed = 0
    for n in graph.nodes:
        if n.graph is not graph or n.op_type != "Cast":
            continue
        src = n.inputs[0]
        p = src.producer if src is not None else None
        if p is None or p.op_type != "Cast" or p.attr("to") != T.FLOAT:
            continue
        inner = p.inputs[0]
        if inner is None or inner.dtype != n.attr("to") or inner.dtype not in \
                FLOAT_TYPES.values() or n.outputs[0].is_graph_output():
            continue
        n.outputs[0].replace_all_uses_with(inner)
        graph.remove(n)
        removed += 1
        if not p.outputs[0].uses and not p.outputs[0].is_graph_output():
            graph.remove(p)
    return removed


def lower_int4_weight(graph: Graph, node: Node, block_size: int = 32, *,
                      input_mean: np.ndarray | None = None,
                      record: dict | None = None) -> str | None:
    """INT4 block-wise weights for a MatMul/Gemm with a [K, N] (or transB [N, K]) weight.
    Returns the form used ("dq21" or "matmulnbits") or None when the layer does not fit.
    `input_mean` (per input feature) turns on bias correction; its record goes to `record`."""
    if node.op_type not in ("MatMul", "Gemm") or weight_input(node) is None:
        return None
    wv = node.inputs[1]
    w = np.asarray(const_array(wv), np.float32)
    if w.ndim != 2:
        return None
    if node.op_type == "Gemm":
        if node.attr("transA", 0) or node.attr("alpha", 1.0) != 1.0:
            return None
        if node.attr("transB", 0):
            w = w.T
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            c = const_array(node.inputs[2])
            if c is None or c.ndim != 1 or node.attr("beta", 1.0) != 1.0:
                return None
    k, n = w.shape
    if k % block_size or k < block_size:
        return None
    blocks = w.reshape(k // block_size, block_size, n)
    s = np.max(np.abs(blocks), axis=1) / 7.0
    s = np.where(s > 0, s, 1.0).astype(np.float32)  # [K/B, N]
    q = np.clip(np.round(blocks / s[:, None, :]), -8, 7).astype(np.int8).reshape(k, n)
    if input_mean is not None:
        w_q = (q.reshape(k // block_size, block_size, n) * s[:, None, :]).reshape(k, n)
        shift = bc.linear_shift(w, w_q, input_mean)  # [K, N] here whatever transB says
        rec = bc.fold_shift(graph, node, shift) if shift is not None else \
            {"corrected": False, "why": "the input mean does not match the weight"}
        if record is not None:
            record.update(rec)
    opset = graph.root.opset_imports.get("", 0)
    if opset >= 21:
        import ml_dtypes

        qv = graph.make_constant(q.astype(ml_dtypes.int4), wv.name + "_int4")
        sv = graph.make_constant(s, wv.name + "_scale")
        dq = _node(graph, "DequantizeLinear", [qv, sv], T.FLOAT, (k, n), wv.name + "/dq",
                   axis=0, block_size=block_size)
        graph.insert_before(node, dq)
        if node.op_type == "Gemm":
            node.set_attr("transB", 0)
        node.set_input(1, dq.outputs[0])
        form = "dq21"
    else:
        graph.root.opset_imports.setdefault("com.microsoft", 1)
        u = (q.T.reshape(n, k // block_size, block_size) + 8).astype(np.uint8)
        packed = (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)  # [N, nb, B/2]
        bv = graph.make_constant(packed, wv.name + "_q4")
        sv = graph.make_constant(np.ascontiguousarray(s.T).reshape(-1), wv.name + "_scales")
        ins = [node.inputs[0], bv, sv]
        out = node.outputs[0]
        mm = Node("MatMulNBits", [], [out], domain="com.microsoft",
                  name=graph.unique_name(node.name + "_nbits"))  # takes over the output
        for x in ins:
            mm.append_input(x)
        if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2] is not None:
            mm.append_input(None)  # zero_points
            mm.append_input(None)  # g_idx
            mm.append_input(node.inputs[2])
        for key, val in (("K", k), ("N", n), ("bits", 4), ("block_size", block_size)):
            mm.set_attr(key, val)
        graph.insert_before(node, mm)
        mm.meta = dict(node.meta)
        graph.remove(node, force=True)
        node = mm
        form = "matmulnbits"
    graph.drop_if_unused(wv)
    node.meta["precision"] = "int4-weight"
    return form
