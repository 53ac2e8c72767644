"""What particular runtimes do beyond grouping a graph into kernels (`compiler.cost.kernels`):
ONNX Runtime's Q/DQ selectors, NHWC int8 regions, dispatched views and epilogue limits, the
Casts a runtime inserts around ops it has no half-precision kernel for, and the Q/DQ a
precision simulated on a graph not lowered yet would add. Each rule cites the profile it came
from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import onnx

from compiler.cost.flops import numel
from compiler.cost.memory import ALIAS_OPS
from compiler.cost.ops import (
    _HALF,
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

__all__ = ["ORT_EPILOGUES", "ORT_FUNCTION_BODIES", "ORT_X86_HALF_OPS", "function_body_kernels",
           "half_kernels", "load_time_values", "ort_half_plan"]


# ONNX Runtime 1.32's CPU execution provider on a core without fp16 arithmetic (x86): the ops
# that have a float16 kernel, found by running Transpose -> op -> Transpose in fp16 and reading
# where the optimised graph puts Casts (tests/test_cost_runtime_rules.py re-checks a sample
# against the installed onnxruntime). Everything else - Conv/FusedConv, MatMul/Gemm,
# elementwise arithmetic and activations, Softmax, pooling, reductions, Resize, Pad, Where -
# runs in fp32 between Casts. Ops with a function body and no fp16 kernel are expanded into
# it (`ORT_FUNCTION_BODIES`).
ORT_X86_HALF_OPS = frozenset({
    "LayerNormalization", "SimplifiedLayerNormalization", "SkipLayerNormalization", "Min",
    "Max", "Clip", "Round", "Concat", "Slice", "Split", "Expand", "Gather", "Identity",
    "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Shape", "Size", "Cast"})
ORT_FUNCTION_BODIES = {
    "Softmax": ("ReduceMax", "Sub", "Exp", "ReduceSum", "Div"),
    "Gelu": ("Mul", "Erf", "Add", "Mul", "Mul"),
    "FastGelu": ("Mul", "Mul", "Add", "Mul", "Tanh", "Add", "Mul", "Mul"),
}
_FLOAT = onnx.TensorProto.FLOAT
# ORT's isolation check looks at the first input of a variadic operand list only
_VARIADIC = frozenset({"Concat", "Sum", "Max", "Min", "Mean"})


def load_time_values(nodes: list[Node]) -> set[int]:
    """Ids of the values a runtime computes once, when it loads the graph (constant folding):
    constants, Shape/Size of a tensor whose shape is static, and whatever nodes compute from
    those alone (the shape arithmetic of a static graph)."""
    out: set[int] = set()
    for n in nodes:  # graph order is topological
        ins = [v for v in n.inputs if v is not None]
        if ins and (n.op_type in ("Shape", "Size") and ins[0].static_shape() is not None or
                    all(_is_const(v) or id(v) in out for v in ins)):
            out.update(id(o) for o in n.outputs)
    return out


def _ort_keeps(node: Node, folded: set[int]) -> bool:
    """Whether `node` is still a node once ONNX Runtime has loaded the graph: Constant nodes
    become initializers, Identity/Dropout go, `load_time_values` are folded."""
    if node.op_type in ("Constant", "Identity", "Dropout"):
        return False
    return not (node.outputs and all(id(o) in folded for o in node.outputs))


def _cast_kernel(v: Value, tag: str, bind) -> Kernel:
    """A Cast ONNX Runtime inserts between fp16 and fp32 (reads 2, writes 4 bytes or back)."""
    return Kernel(f"{v.name}/{tag}", ("Cast",), "data", "fp32", 0.0, 6.0 * numel(v, bind))


def ort_half_plan(nodes: list[Node], cfg: Mapping[str, Any], profile, bind, folded: set[int]
                  ) -> tuple[set[int], list[Kernel], set[int], set[int]]:
    """How ONNX Runtime runs the fp16/bf16 regions of a graph on a CPU without half kernels
    for most ops: (ids of the nodes it runs in fp32, the Cast kernels it inserts, ids of the
    graph's own Casts it removes). Its rules (InsertCastTransformer and
    RemoveDuplicateCastTransformer): a node with no half kernel gets a Cast on each half input
    and output; a half node whose half inputs all come from such nodes (of a variadic list,
    the first only) and whose half results all go to them runs in fp32 too (no graph output);
    one Cast per tensor and direction; a Cast the graph already has (fp32 -> half in front of
    an fp32 node, half -> fp32 after one) cancels the inserted one, and goes itself when
    nothing else reads it (from another type: merges into the inserted one). A half weight
    read by one fp32 node becomes an fp32 initializer; one shared by several keeps its Cast,
    run on every call, and a conv reading it is no constant-weight conv for the NCHWc layout
    pass: it runs on the plain kernel (ResNet-50 with BN-folded zero biases, shared: 49 plain
    FusedConv). Returns the fp32 nodes, the Cast kernels, the graph's Casts that go, and the
    nodes reading a weight through a Cast. Not modelled: ORT's own ConstantSharing of equal
    scalars (a few more shared-weight Casts on transformers)."""
    present = [n for n in nodes if _ort_keeps(n, folded)]
    ids = {id(n) for n in present}

    def half_ins(n: Node) -> list[Value]:
        return [v for v in n.inputs if v is not None and v.dtype in _HALF and not _is_const(v)]

    def half_outs(n: Node) -> list[Value]:
        return [o for o in n.outputs if o.dtype in _HALF]

    def readers(v: Value) -> list[Node]:
        return [c for c, _ in v.uses if id(c) in ids]

    needs = {id(n) for n in present if (half_ins(n) or half_outs(n)) and n.op_type != "Cast"
             and not half_kernels(cfg, profile, n.op_type)}
    wide = set(needs)
    for n in present:
        if id(n) in needs or n.op_type == "Cast" or not half_outs(n):
            continue
        ins = half_ins(n)[:1] if n.op_type in _VARIADIC else half_ins(n)
        prods = [v.producer for v in ins if v.producer is not None]
        edges = any(v is not None and v.producer is not None for v in n.inputs)
        if edges and not any(o.is_graph_output() for o in n.outputs) and \
                all(id(p) in needs for p in prods) and \
                all(id(c) in needs for o in half_outs(n) for c in readers(o)):
            wide.add(id(n))
    casts: list[Kernel] = []
    dropped: set[int] = set()
    seen: set[int] = set()
    for n in present:
        if id(n) not in wide:
            continue
        for v in half_ins(n):
            p = v.producer
            if id(v) in seen or (p is not None and id(p) in wide):
                continue
            seen.add(id(v))
            if p is not None and p.op_type == "Cast" and p.inputs[0] is not None:
                if not v.is_graph_output() and all(id(c) in wide for c in readers(v)):
                    dropped.add(id(p))  # the inserted Cast reads p's input instead
                if p.inputs[0].dtype == _FLOAT:
                    continue  # fp32 -> half -> fp32: both go
            casts.append(_cast_kernel(v, "to_fp32", bind))
        for o in half_outs(n):
            rest = [c for c in readers(o) if id(c) not in wide]
            if not rest and not o.is_graph_output():
                continue
            back = [c for c in rest if c.op_type == "Cast" and c.outputs[0].dtype == _FLOAT]
            if back and len(back) == len(rest) and not o.is_graph_output():
                dropped |= {id(c) for c in back if not c.outputs[0].is_graph_output()}
                continue
            casts.append(_cast_kernel(o, "to_half", bind))
    weights: dict[int, tuple[Value, set[int]]] = {}
    for n in (x for x in present if id(x) in wide):
        for v in n.inputs:
            if v is not None and v.dtype in _HALF and _is_const(v):
                weights.setdefault(id(v), (v, set()))[1].add(id(n))
    through_cast: set[int] = set()
    for v, users in weights.values():
        if len(users) > 1:
            casts.append(_cast_kernel(v, "to_fp32", bind))
            through_cast |= users
    return wide, casts, dropped, through_cast


def function_body_kernels(node: Node, bind) -> list[Kernel]:
    """The kernels beyond the first that ONNX Runtime runs for a node it expanded into its
    function body (`ORT_FUNCTION_BODIES`): each op reads and writes the tensor in fp32
    (reductions write a row each)."""
    body = ORT_FUNCTION_BODIES.get(node.op_type, ())
    n = numel(node.outputs[0], bind) if node.outputs else 0
    return [Kernel(f"{node.name or node.op_type}/{op}", (op,), "elementwise", "fp32", float(n),
                   (4.0 if op.startswith("Reduce") else 8.0) * n) for op in body[1:]]


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
    """ONNX Runtime runs views (Reshape, Unsqueeze, ...), Shape and ConstantOfShape as kernels
    of their own: a dispatch each (views and Shape move no data). Asked for nodes it does not
    constant-fold at load (`load_time_values`): the decoder's shape arithmetic on symbolic
    dims (ORT profile of the decoder: 79 Unsqueeze, 26 Reshape, 24 Shape kernels per run)."""
    return node.op_type in FREE_OPS and node.op_type not in ("Constant", "Identity", "Dropout") \
        and bool(node.inputs) and node.inputs[0] is not None and not _is_const(node.inputs[0])


def _inputs_dequantized(node: Node) -> bool:
    """Whether every activation input of `node` comes out of a DequantizeLinear: ONNX
    Runtime's selectors form QLinearAdd/QLinearMul/... (and fold the Q after) only then; a
    float Mul (an RMSNorm scale) followed by a Q runs as Mul, then QuantizeLinear (decoder in
    int8: 29 QuantizeLinear kernels per run, 13 of them after such a Mul)."""
    acts = [v for v in node.inputs if v is not None and not _is_const(v)]
    return bool(acts) and all(v.producer is not None and v.producer.op_type == "DequantizeLinear"
                              for v in acts)


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
    Gemm) in half precision on the unit. ONNX Runtime's CPU execution provider has half
    kernels for most ops only on Arm cores with fp16 arithmetic; elsewhere only for the ops in
    `ORT_X86_HALF_OPS` (layout ops and layer norms), even on cores with AVX512-FP16 (ResNet-50
    at 112 px in fp16 on this host: all 53 convs in fp32, on the plain kernel: ORT's NCHWc
    layout pass runs before its Casts and skips fp16 convs; 1.4x the time of fp32)."""
    u = profile.unit(cfg["unit"]) if cfg["unit"] else profile.main_unit
    if cfg["backend"] != "onnxruntime" or u is None or u.kind != "cpu" or "fp16" in u.isa:
        return True
    return (op or "MatMul") in ORT_X86_HALF_OPS


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
                    cap > 0 and n.op_type == _Q and by_id[root].op_type in _ORT_QLINEAR and \
                    _inputs_dequantized(by_id[root])
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
