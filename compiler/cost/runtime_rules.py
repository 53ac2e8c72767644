"""What particular runtimes do beyond grouping a graph into kernels (`compiler.cost.kernels`):
ONNX Runtime's Q/DQ selectors, NHWC int8 regions, dispatched views and epilogue limits, the
Casts a runtime inserts around ops it has no half-precision kernel for, and the Q/DQ a
precision simulated on a graph not lowered yet would add. Each rule cites the profile it came
from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from compiler.cost.flops import numel
from compiler.cost.memory import ALIAS_OPS
from compiler.cost.ops import (
    _ATTN,
    _CONV,
    _HALF,
    _MATMUL,
    _Q,
    CONV_CLASSES,
    FREE_OPS,
    NATIVE_FUSION,
    Kernel,
    _is_const,
    _is_weight,
    _through_free,
    op_class,
)
from compiler.ir import Node, Value

__all__ = ["ORT_EPILOGUES", "half_kernels"]


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


def _result_quantized(node: Node) -> bool:
    """Whether `node`'s result (after a single Relu) is read only by QuantizeLinear nodes."""
    from passes.quantize import result_after_relu

    v = result_after_relu(node)
    users = v.consumers()
    return bool(users) and not v.is_graph_output() and all(u.op_type == _Q for u in users)
