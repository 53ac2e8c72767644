"""The kernels one inference launches: how each backend's runtime groups, fuses and types the
graph's nodes. `compiler.cost.model` times them.

Grouping. Nodes sharing `meta["fusion_group"]["id"]` form one kernel (as in nn-Meter: a fused
group runs as one kernel, its internal tensors never go through memory). Backends that fuse on
their own (OpenVINO, TVM, TensorRT) also merge an elementwise node into the kernel producing its
input when that input has no other reader, and fold BatchNormalization into a preceding Conv.
ONNX Runtime's CPU fusions are narrower: with `fusion` on (level "all") a Conv or MatMul takes
at most two elementwise epilogues and elementwise chains stay separate kernels; with it off
("basic") only BatchNormalization folds. View ops (Reshape, Squeeze, ...), Shape/Constant and
DequantizeLinear of constant weights cost nothing; with Q/DQ fusion a DequantizeLinear of an
activation merges into its reader.

Per kernel: FLOPs (compiler.cost.flops), bytes read from outside the kernel plus bytes written
that leave it, the op class of its anchor node (conv, dwconv = depthwise conv, matmul,
attention, elementwise, norm, data), its compute precision, its reduction length K (conv/matmul)
and its row count (norm). Depthwise convs are their own class: their kernels differ (an int8
depthwise conv is measured 4x slower than fp32 with ONNX Runtime on this host).

Precision comes from the graph: a node reading a DequantizeLinear of an int8 (int4) constant
computes in int8 (int4-weight, i.e. fp16/fp32 compute with half-byte weights) and reads 1 (0.5)
byte per weight; a MatMul of two activations is int8 only when both are dequantized; a node
whose float inputs are fp16/bf16 (Cast regions) computes in fp16/bf16. A graph not lowered yet
can be costed for a precision policy (`config["precision"]`): every Conv/MatMul/Gemm with a
constant weight is *simulated* at that precision ("mixed": int8 where the dot product is at
least 64 long, else float), and on ONNX Runtime the int8 regions pay a QuantizeLinear and a
DequantizeLinear at their edges - a stand-in until the precision pass lowers the graph.

Runtime rules. ONNX Runtime forms an integer Conv only for DQ -> Conv [-> Relu] -> Q; an int8
Conv whose result is not re-quantized runs as a float Conv on its plain (not NCHWc) kernel plus
a weight DequantizeLinear. ONNX Runtime's CPU provider has half-precision Conv/MatMul kernels
only on Arm cores with fp16 arithmetic; elsewhere half-precision regions run in fp32.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import onnx

from compiler.cost.flops import dims, node_flops, numel
from compiler.cost.memory import ALIAS_OPS, weight_bytes
from compiler.ir import Graph, Node, Value, is_constant

__all__ = ["ACT_WIDTH", "COMPUTE_CLASSES", "CONV_CLASSES", "FREE_OPS", "MEMORY_CLASSES",
           "NATIVE_FUSION", "OP_CLASSES", "WEIGHT_WIDTH", "Kernel", "half_kernels", "kernels",
           "op_class", "resident_weight_bytes", "resolve_config", "weight_widths"]

OP_CLASSES = ("conv", "dwconv", "matmul", "attention", "elementwise", "norm", "data", "qdq")
CONV_CLASSES = ("conv", "dwconv")  # dwconv: depthwise (one input channel per group)
# their efficiency scales the whole kernel; qdq = a standalone (De)QuantizeLinear
MEMORY_CLASSES = ("elementwise", "norm", "data", "qdq")
COMPUTE_CLASSES = ("conv", "dwconv", "matmul", "attention")
FREE_OPS = ALIAS_OPS | {"Shape", "Size", "Constant", "ConstantOfShape"}
_CONV = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "FusedConv"}
_MATMUL = {"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "MatMulNBits", "FusedMatMul",
           "QGemm", "MatMulIntegerToFloat"}
_ATTN = {"Attention", "MultiHeadAttention", "GroupQueryAttention"}
_NORM = {"Softmax", "LogSoftmax", "LayerNormalization", "BatchNormalization",
         "InstanceNormalization", "GroupNormalization", "RMSNormalization",
         "SimplifiedLayerNormalization", "SkipLayerNormalization",
         "SkipSimplifiedLayerNormalization", "MaxPool", "AveragePool", "GlobalAveragePool",
         "GlobalMaxPool", "ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2",
         "ReduceSumSquare", "ReduceProd", "ArgMax", "ArgMin", "TopK", "CumSum"}
_DATA = {"Transpose", "Concat", "Split", "Slice", "Gather", "GatherElements", "GatherND",
         "Expand", "Pad", "Resize", "Tile", "DepthToSpace", "SpaceToDepth", "ScatterND",
         "ScatterElements", "Range", "NonZero", "Trilu", "Upsample", "Cast", "CastLike"}
_Q, _DQ = "QuantizeLinear", "DequantizeLinear"
_INT8 = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
_INT4 = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
_HALF = {onnx.TensorProto.FLOAT16: "fp16", onnx.TensorProto.BFLOAT16: "bf16"}
ACT_WIDTH = {"int8": 1.0, "fp16": 2.0, "bf16": 2.0}  # bytes per activation below fp32
WEIGHT_WIDTH = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "int4-weight": 0.5}
NATIVE_FUSION = {"openvino": True, "tvm": True, "tensorrt": True, "tosa": True, "hls": True}


@dataclass(frozen=True)
class Kernel:
    """One kernel launch: its nodes, class, compute precision, FLOPs and bytes moved."""

    name: str
    ops: tuple[str, ...]
    op_class: str
    precision: str
    flops: float
    bytes: float
    depth: float = 0.0  # reduction length per output element of a conv/matmul (0: none)
    plain: bool = False  # a conv on the runtime's plain kernel, as with its fusion off
    rows: float = 0.0  # rows a normalisation/reduction kernel loops over (outer size)
    spatial: float = 0.0  # output pixels per channel of a conv (H x W; 0: not a conv)



def op_class(node: Node) -> str:
    op = node.op_type
    if op in _CONV:
        w = node.inputs[1] if len(node.inputs) > 1 else None
        groups = int(node.attr("group", 1) or 1)
        if groups > 1 and w is not None and w.shape and len(w.shape) > 1 and w.shape[1] == 1:
            return "dwconv"
        return "conv"
    if op in _ATTN:
        return "attention"
    if op in _MATMUL:
        return "matmul" if any(_is_weight(v) for v in node.inputs[1:2]) or op == "Gemm" \
            else "attention"
    if op in _NORM:
        return "norm"
    if op in _DATA or op in FREE_OPS:
        return "data"
    if op in (_Q, _DQ, "DynamicQuantizeLinear"):
        return "qdq"
    return "elementwise"


def _root(v: Value | None) -> Value | None:
    """`v` with views (Identity, Reshape, ...) looked through."""
    while v is not None and v.const is None and v.producer is not None and \
            v.producer.op_type in ALIAS_OPS and v.producer.inputs:
        v = v.producer.inputs[0]
    return v


def _is_const(v: Value | None) -> bool:
    """A constant: an initializer or Constant output, possibly behind views (Identity, ...)."""
    return is_constant(_root(v))


def _is_weight(v: Value | None) -> bool:
    """A constant, or a DequantizeLinear (possibly behind a Cast) of one."""
    if v is None:
        return False
    if _is_const(v):
        return True
    p = v.producer
    return p is not None and p.op_type in (_DQ, "Cast") and _is_weight(p.inputs[0])


def resolve_config(config: Mapping[str, Any] | None, profile) -> dict[str, Any]:
    """`config` with defaults filled: backend, precision, fusion, threads, power_mode, unit."""
    c = dict(config or {})
    c.setdefault("backend", profile.default_backend)
    c["precision"] = c.get("precision") or "fp32"
    c.setdefault("fusion", True)
    c["threads"] = int(c.get("threads") or 0)
    c.setdefault("power_mode", None)
    c.setdefault("unit", None)
    return c


def _lowered(graph: Graph) -> bool:
    return any(n.op_type in (_Q, _DQ, "MatMulNBits") or (n.op_type == "Cast" and n.attr("to") in
                                                          _HALF) for n in graph)


_SIM_CONV = ("Conv", "FusedConv")  # FusedConv: edgec's ONNX Runtime fusion of Conv + activation
_SIM_OPS = _SIM_CONV + ("MatMul", "Gemm", "FusedMatMul", "FusedGemm")


def _sim_precision(node: Node, policy: str, profile, bind) -> str:
    if node.op_type not in _SIM_OPS or len(node.inputs) < 2 or not _is_weight(node.inputs[1]):
        return "fp32"
    if policy == "mixed":
        w = dims(node.inputs[1], bind) or [1, 1]
        if node.op_type in _SIM_CONV:
            k = numel(node.inputs[1], bind) // max(w[0], 1)
        else:
            k = w[-1] if node.op_type in ("Gemm", "FusedGemm") and node.attr("transB", 0) else w[0]
        if k >= 64:
            return "int8"
        return "fp16" if profile.peak("fp16") > 0 else "fp32"
    if policy == "int4-weight" and node.op_type in _SIM_CONV:
        return "fp32"
    return policy


def _node_precision(node: Node, qdq_fused: bool) -> str:
    """Compute precision of a node as the lowered graph states it. A MatMul of two activations
    (attention) is int8 only when both operands come out of an int8 DequantizeLinear."""
    int8_inputs = 0
    for v in node.inputs:
        p = v.producer if v is not None else None
        if p is not None and p.op_type == _DQ and p.inputs[0] is not None and qdq_fused:
            dt = p.inputs[0].dtype
            if dt in _INT4:
                return "int4-weight"
            if dt in _INT8 and node.op_type in _CONV | _MATMUL:
                int8_inputs += 1
    if int8_inputs and (int8_inputs >= 2 or op_class(node) != "attention"):
        return "int8"
    if node.op_type == "MatMulNBits":
        return "int4-weight"
    for v in node.inputs:
        if v is not None and v.dtype in _HALF:
            return _HALF[v.dtype]
    return "fp32"


def kernels(graph: Graph, config: Mapping[str, Any], profile,
            bindings: Mapping[str, int] | None = None) -> tuple[list[Kernel], list[str]]:
    """The kernels one inference launches, and the assumptions made building them."""
    cfg = resolve_config(config, profile)
    bind = dict(bindings or {})
    notes: list[str] = []
    native = NATIVE_FUSION.get(cfg["backend"], False) or bool(cfg["fusion"])
    simulate = cfg["precision"] != "fp32" and not _lowered(graph)
    if simulate:
        notes.append(f"precision {cfg['precision']!r} simulated: Conv/MatMul/Gemm with constant "
                     "weights costed at that precision (graph not lowered to Q/DQ/Cast yet)")
    nodes = list(graph)
    prec: dict[int, str] = {}
    for n in nodes:
        prec[id(n)] = _sim_precision(n, cfg["precision"], profile, bind) if simulate \
            else _node_precision(n, native)
    parent: dict[int, int] = {id(n): id(n) for n in nodes}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    groups: dict[str, int] = {}
    for n in nodes:
        fg = n.meta.get("fusion_group")
        if isinstance(fg, Mapping) and "id" in fg:
            gid = str(fg["id"])
            if gid in groups:
                parent[find(id(n))] = find(groups[gid])
            else:
                groups[gid] = id(n)
    by_id = {id(n): n for n in nodes}
    free = set()
    ort = cfg["backend"] == "onnxruntime"
    for n in nodes:
        op = n.op_type
        if ort and _ort_dispatches(n):
            continue
        if op in FREE_OPS or (op == _DQ and _is_const(n.inputs[0])) or (
                op == "Cast" and _is_const(n.inputs[0])):
            free.add(id(n))
        elif op == _DQ and native and (cfg["backend"] != "onnxruntime" or all(
                _ort_fuses_dq(c) for c, _ in n.outputs[0].uses)):
            free.add(id(n))  # merged into its reader by Q/DQ fusion
    plain: set[int] = set()  # convs on the runtime's plain (not blocked-layout) kernel
    if cfg["backend"] == "onnxruntime" and simulate:
        from passes.quantize import result_after_relu

        for n in nodes:  # the lowering re-quantizes every int8 Conv result but a graph output
            if prec[id(n)] == "int8" and n.op_type in _SIM_CONV and \
                    result_after_relu(n).is_graph_output():
                prec[id(n)] = "fp32"
                plain.add(id(n))
    if cfg["backend"] == "onnxruntime" and not simulate:
        slow = []
        for n in nodes:  # ORT's QDQ selector needs DQ -> Conv [-> Relu] -> Q
            w = n.inputs[1] if n.op_type == "Conv" and len(n.inputs) > 1 else None
            if prec[id(n)] == "int8" and w is not None and w.producer is not None and \
                    not _result_quantized(n):
                prec[id(n)] = "fp32"  # a float Conv, its weights dequantized on every call
                free.discard(id(w.producer))
                plain.add(id(n))
                slow.append(n.name or "Conv")
        if slow:
            notes.append(f"{len(slow)} int8 Conv(s) ({', '.join(slow[:3])}) have a result that "
                         "is not re-quantized: ONNX Runtime runs them in float on its plain "
                         "(not NCHWc) kernel and dequantizes their weights on every call")
    _merge_epilogues(nodes, cfg, free, find, parent, by_id)
    members: dict[int, list[Node]] = {}
    for n in nodes:
        if id(n) not in free:
            members.setdefault(find(id(n)), []).append(n)
    out: list[Kernel] = []
    kprec: dict[int, str] = {}
    kcls: dict[int, str] = {}
    widened: set[int] = set()  # kernels run in fp32 between Casts the runtime inserts
    for root, ns in members.items():
        ids = {id(n) for n in ns}
        anchor = max(ns, key=lambda n: (node_flops(n, bind), -ns.index(n)))
        cls = op_class(anchor)
        p = prec[id(anchor)] if cls in COMPUTE_CLASSES else "fp32"
        flops = float(sum(node_flops(n, bind) for n in ns))
        nbytes, seen = 0.0, set()
        for n in ns:
            for v in n.inputs:
                if v is None or id(v) in seen:
                    continue
                seen.add(id(v))
                nbytes += _read_bytes(v, ids, free, prec[id(n)], simulate, bind)
            for o in n.outputs:
                if o.is_graph_output() or any(id(c) not in ids for c, _ in o.uses):
                    w = _dtype_width(o.dtype)
                    nbytes += numel(o, bind) * (min(w, ACT_WIDTH.get(p, w)) if simulate
                                                else w)
        if all(n.op_type in FREE_OPS for n in ns):
            nbytes = 0.0  # a view or shape read ONNX Runtime dispatches: no data moves
        if cls in COMPUTE_CLASSES and p in ("fp16", "bf16") and not half_kernels(
                cfg, profile, anchor.op_type):
            p, nbytes = "fp32", 2 * nbytes  # fp32 weights and activations between the
            widened.add(root)  # Casts the runtime inserts (_widening_casts)
        name = anchor.name or anchor.op_type
        depth = 0.0
        if cls in COMPUTE_CLASSES and anchor.outputs and numel(anchor.outputs[0], bind):
            depth = node_flops(anchor, bind) / (2.0 * numel(anchor.outputs[0], bind))
        out.append(Kernel(name, tuple(n.op_type for n in ns), cls, p, flops, nbytes, depth,
                          id(anchor) in plain, _rows(anchor, bind) if cls == "norm" else 0.0,
                          _spatial(anchor, bind) if cls in CONV_CLASSES else 0.0))
        kprec[root], kcls[root] = p, cls
    if simulate and cfg["backend"] == "onnxruntime":
        out += _simulated_qdq(members, kprec, find, bind)
    if cfg["backend"] == "onnxruntime" and native:
        out += _ort_nhwc_transposes(members, kprec, kcls, find, free, bind)
    if widened:
        casts = _widening_casts(members, widened, find, free, bind)
        notes.append(f"{cfg['backend']} has no half-precision kernel for {len(widened)} "
                     f"Conv/MatMul kernel(s) on this unit: they run in fp32 between "
                     f"{len(casts)} Casts it inserts")
        out += casts
    return out, notes


def _widening_casts(members: dict[int, list[Node]], widened: set[int], find, free: set[int],
                    bind) -> list[Kernel]:
    """The Casts a runtime inserts around nodes it has no half-precision kernel for: one on
    each half-precision edge between such a node and a node that runs in half (or a graph
    output); two such nodes in a row share fp32 (ONNX Runtime drops the Cast pairs it inserted
    itself). ORT profile of the decoder in fp16 on this host: 74 Casts, ~1/5 of the run."""
    out, seen = [], set()

    def cast(v: Value, tag: str) -> None:
        if (id(v), tag) not in seen:
            seen.add((id(v), tag))
            out.append(Kernel(f"{v.name}/{tag}", ("Cast",), "data", "fp32", 0.0,
                              6.0 * numel(v, bind)))

    for root in widened:
        ids = {id(n) for n in members[root]}
        for n in members[root]:
            for v, p in (_through_free(x, free) for x in n.inputs if x is not None):
                if v.dtype in _HALF and not _is_const(v) and (p is None or (
                        id(p) not in ids and find(id(p)) not in widened)):
                    cast(v, "to_fp32")
            for o in n.outputs:
                if o.dtype in _HALF and (o.is_graph_output() or any(
                        id(c) not in ids and find(id(c)) not in widened for c, _ in o.uses)):
                    cast(o, "to_half")
    return out


def _simulated_qdq(members: dict[int, list[Node]], kprec: dict[int, str], find, bind
                   ) -> list[Kernel]:
    """The QuantizeLinear / DequantizeLinear kernels ONNX Runtime runs at the edges of int8
    regions, for a precision simulated on a graph not lowered yet: an int8 kernel whose input
    comes from a float kernel (or the graph input) quantizes it; one whose result goes on to a
    float kernel (or out of the graph) dequantizes it. Inside a region QLinear ops chain."""
    out = []
    for root, ns in members.items():
        if kprec.get(root) != "int8":
            continue
        ids = {id(n) for n in ns}
        for n in ns:
            for v in n.inputs[:1]:
                p = v.producer if v is not None else None
                if v is not None and not _is_weight(v) and (
                        p is None or kprec.get(find(id(p))) != "int8"):
                    out.append(Kernel(f"{v.name}/q", ("QuantizeLinear",), "qdq",
                                      "fp32", 3.0 * numel(v, bind), 5.0 * numel(v, bind)))
            for o in n.outputs:
                readers = [c for c, _ in o.uses if id(c) not in ids]
                if o.is_graph_output() or any(
                        kprec.get(find(id(c)), "fp32") != "int8" for c in readers):
                    out.append(Kernel(f"{o.name}/dq", ("DequantizeLinear",), "qdq",
                                      "fp32", 2.0 * numel(o, bind), 5.0 * numel(o, bind)))
    return out


# Readers ONNX Runtime's Q/DQ selectors fold a DequantizeLinear into (QLinear* / integer
# kernels, or dropped Q/DQ pairs around layout ops); for others the DequantizeLinear runs alone.
_ORT_QLINEAR = {"Add", "Mul", "AveragePool", "GlobalAveragePool", "Sigmoid", "LeakyRelu",
                "Softmax", "Concat"}
_ORT_DROP_QDQ = ALIAS_OPS | {"Transpose", "MaxPool", "Resize", "Gather", "Slice", "Split"}


def _ort_dispatches(node: Node) -> bool:
    """ONNX Runtime runs views (Reshape, Unsqueeze, ...) and Shape as kernels of their own: a
    dispatch each, no data moved. Its constant folding removes those on constants and Shape of
    a tensor whose shape is static; the decoder's shape arithmetic on symbolic dims stays (ORT
    profile of the decoder: 79 Unsqueeze, 26 Reshape, 24 Shape kernels per run)."""
    if node.op_type not in FREE_OPS or node.op_type in ("Constant", "Identity", "Dropout") or \
            not node.inputs or node.inputs[0] is None or _is_const(node.inputs[0]):
        return False
    if node.op_type in ("Shape", "Size"):
        return node.inputs[0].static_shape() is None
    return node.op_type != "ConstantOfShape" or not _is_const(node.inputs[0])


def _ort_fuses_dq(reader: Node) -> bool:
    if reader.op_type in ("MatMul", "Gemm") or reader.op_type in _ORT_DROP_QDQ:
        return True
    if reader.op_type == "Conv" or reader.op_type in _ORT_QLINEAR:
        return _result_quantized(reader)  # QLinearConv / QLinearAdd ... need a Q after
    return False


def _ort_nhwc_transposes(members: dict[int, list[Node]], kprec: dict[int, str],
                         kcls: dict[int, str], find, free: set[int], bind) -> list[Kernel]:
    """ONNX Runtime (level "all") runs int8 Convs as NHWC QLinearConv and puts a Transpose of
    the quantized tensor where such a region begins and ends (ORT profile of the zoo CNN in
    int8: 9-18 us per Transpose against 26-89 us per QLinearConv). The region: int8 convs and
    the elementwise kernels fed only by the region."""
    nhwc: set[int] = set()
    edges: dict[int, list[tuple[Value, int | None]]] = {}
    for root, ns in members.items():  # graph order
        ids = {id(n) for n in ns}
        ins = []
        for n in ns:
            for v, p in (_through_free(x, free) for x in n.inputs if x is not None):
                if (p is None or id(p) not in ids) and not _is_const(v):
                    ins.append((v, find(id(p)) if p is not None else None))
        edges[root] = ins
        if kcls[root] in CONV_CLASSES and kprec.get(root) == "int8":
            nhwc.add(root)
        elif kcls[root] == "elementwise" and ins and all(k in nhwc for _, k in ins):
            nhwc.add(root)
    out, seen = [], set()
    for root, ins in edges.items():
        for v, k in ins:
            if ((root in nhwc) != (k in nhwc)) and (id(v), root in nhwc) not in seen:
                seen.add((id(v), root in nhwc))
                out.append(Kernel(f"{v.name}/transpose", ("Transpose",), "data", "int8", 0.0,
                                  2.0 * numel(v, bind)))
    for root in nhwc:
        for n in members[root]:
            for o in n.outputs:
                if o.is_graph_output():
                    out.append(Kernel(f"{o.name}/transpose", ("Transpose",), "data", "int8",
                                      0.0, 2.0 * numel(o, bind)))
    return out


# ONNX Runtime's CPU fusions (level "all") give a Conv or MatMul at most two elementwise
# epilogues (NCHWc Conv + Add + activation, MatMul + Add -> Gemm + activation); it never merges
# elementwise chains on their own. Level "basic" folds only BatchNormalization into a Conv.
ORT_EPILOGUES = 2


def half_kernels(cfg: Mapping[str, Any], profile, op: str | None = None) -> bool:
    """Whether the backend computes `op` (default: MatMul, the general case of Conv/MatMul/
    Gemm) in half precision on the unit. ONNX Runtime's CPU execution provider has half GEMM
    kernels (MLAS) only on Arm cores with fp16 arithmetic; on x86 it inserts Casts and runs
    MatMul/Gemm in fp32, but Conv runs in fp16 (MLAS, plain NCHW kernel) where the core has
    AVX512-FP16 (ORT profile of ResNet-50 at 112 px on this host: 49 fp16 FusedConv kernels,
    no Casts, 1.3x the time of its fp32 NCHWc convs). Elementwise, normalisation and layout ops
    have half kernels everywhere."""
    u = profile.unit(cfg["unit"]) if cfg["unit"] else profile.main_unit
    if cfg["backend"] != "onnxruntime" or u is None or u.kind != "cpu" or "fp16" in u.isa:
        return True
    op = op or "MatMul"
    if op in _CONV:
        return "avx512_fp16" in u.isa and op in ("Conv", "FusedConv")
    return op not in _MATMUL | _ATTN


def _merge_epilogues(nodes: list[Node], cfg: Mapping[str, Any], free: set[int], find, parent,
                     by_id) -> None:
    """Merge elementwise/BatchNormalization nodes into the kernel producing their input, as
    the backend's runtime does: native fusers (OpenVINO, TVM, TensorRT) merge any elementwise
    chain into conv/matmul/elementwise kernels; ONNX Runtime only as `ORT_EPILOGUES` says."""
    native = NATIVE_FUSION.get(cfg["backend"], False)
    cap = None if native else (ORT_EPILOGUES if cfg["fusion"] else 0)
    merged: dict[int, int] = {}
    for n in nodes:
        cls = "elementwise" if n.op_type == _Q else op_class(n)  # a Q merges as an epilogue
        bn = n.op_type == "BatchNormalization"
        if id(n) in free or cls not in ("elementwise", "norm") or (cls == "norm" and not bn):
            continue
        for v in n.inputs:
            p = v.producer if v is not None else None
            if p is None or id(p) not in by_id or id(p) in free or _is_const(v) or \
                    len(v.consumers()) != 1 or v.is_graph_output():
                continue
            root = find(id(p))
            acls = op_class(by_id[root])
            if bn and acls in CONV_CLASSES:
                ok = True
            elif cap is None:
                ok = acls in ("conv", "dwconv", "matmul", "elementwise")
            else:  # ONNX Runtime; with its Q/DQ fusions DQ -> Add -> Q is one QLinearAdd
                ok = acls in ("conv", "dwconv", "matmul") and merged.get(root, 0) < cap or \
                    cap > 0 and n.op_type == _Q and by_id[root].op_type in _ORT_QLINEAR
            if ok:
                parent[find(id(n))] = root
                merged[root] = merged.get(root, 0) + (0 if bn else 1)
                break


def _rows(node: Node, bind) -> float:
    """Independent rows a normalisation/reduction node loops over: its input's size divided by
    the normalised extent (the last axis for Softmax/LayerNorm-style ops, the spatial extent for
    pooling and BatchNormalization, the reduced length for reductions)."""
    d = dims(node.inputs[0], bind) if node.inputs and node.inputs[0] is not None else None
    if not d:
        return 0.0
    if node.op_type in ("BatchNormalization", "InstanceNormalization", "GlobalAveragePool",
                        "GlobalMaxPool", "MaxPool", "AveragePool"):
        return float(d[0] * (d[1] if len(d) > 1 else 1))
    if node.op_type.startswith("Reduce") or node.op_type in ("ArgMax", "ArgMin", "TopK"):
        total = numel(node.inputs[0], bind)
        out = numel(node.outputs[0], bind) if node.outputs else 0
        return float(out or total)
    return float(numel(node.inputs[0], bind) // max(d[-1], 1))


def _spatial(node: Node, bind) -> float:
    d = dims(node.outputs[0], bind) if node.outputs else None
    return float(max(1, math.prod(d[2:]))) if d and len(d) > 2 else 0.0


def _result_quantized(node: Node) -> bool:
    """Whether `node`'s result (after a single Relu) is read only by QuantizeLinear nodes."""
    from passes.quantize import result_after_relu

    v = result_after_relu(node)
    users = v.consumers()
    return bool(users) and not v.is_graph_output() and all(u.op_type == _Q for u in users)


def _dtype_width(dt: int | None) -> float:
    if dt in _INT8:
        return 1.0
    if dt in _INT4:
        return 0.5
    if dt in _HALF:
        return 2.0
    if dt in (onnx.TensorProto.INT64, onnx.TensorProto.DOUBLE):
        return 8.0
    return 4.0


def _through_free(v: Value, free: set[int]) -> tuple[Value, Node | None]:
    """The tensor a kernel really reads for input `v`, and its producer: looks through views
    and folded DequantizeLinear/Cast nodes (the `free` ones)."""
    p = v.producer
    while p is not None and id(p) in free and p.inputs and p.inputs[0] is not None and \
            p.op_type != "Constant":
        v, p = p.inputs[0], p.inputs[0].producer
    return v, p


def _read_bytes(v: Value, ids: set[int], free: set[int], prec: str, simulate: bool,
                bind) -> float:
    """Bytes a kernel reads for input `v` (0 if produced inside the kernel)."""
    v, p = _through_free(v, free)
    if p is not None and id(p) in ids:
        return 0.0
    if _is_const(v) and simulate and prec in WEIGHT_WIDTH:
        return numel(v, bind) * min(WEIGHT_WIDTH[prec], _dtype_width(v.dtype))
    if v.const is not None:
        return float(v.const.nbytes)
    w = _dtype_width(v.dtype)
    return numel(v, bind) * (min(w, ACT_WIDTH.get(prec, w)) if simulate else w)


def weight_widths(graph: Graph, cfg: dict, profile, bind) -> dict[int, float]:
    """Simulated bytes per weight element for weights read by simulated-precision layers."""
    out: dict[int, float] = {}
    if cfg["precision"] == "fp32" or _lowered(graph):
        return out
    for n in graph:
        p = _sim_precision(n, cfg["precision"], profile, bind)
        if p != "fp32" and n.inputs[1] is not None:
            out[id(_root(n.inputs[1]))] = WEIGHT_WIDTH.get(p, 4.0)
    return out


def resident_weight_bytes(graph: Graph, cfg: dict, profile, bind) -> float:
    """Bytes the runtime keeps for the weights: the simulated width (`weight_widths`) where the
    graph is not lowered yet, else each weight's own. Half-precision weights count 4 bytes
    where the backend has no half GEMM kernels: ONNX Runtime on x86 constant-folds the Cast in
    front of each fp16 MatMul into an fp32 weight (SigLIP: 626 MB peak RSS increase in fp16
    against 637 MB in fp32, this host), and its fp16 convs keep as much (cnn_64: 38.2 MB in
    fp16, 38.5 MB in fp32)."""
    cfg = resolve_config(cfg, profile)
    widths = weight_widths(graph, cfg, profile, bind)

    def width(v: Value) -> float | None:
        w = widths.get(id(v))
        half = w == WEIGHT_WIDTH["fp16"] if w is not None else v.dtype in _HALF
        return 4.0 if half and not half_kernels(cfg, profile) else w

    return weight_bytes(graph, width, bind)
