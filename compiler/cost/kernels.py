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
a weight DequantizeLinear. ONNX Runtime's CPU provider has half-precision kernels for most
ops only on Arm cores with fp16 arithmetic; on x86 (AVX512-FP16 included) only layout ops and
layer norms run in fp16, the rest in fp32 between Casts it inserts (`ort_half_plan`, checked
against ORT's optimised graph). These runtime rules live in
`compiler.cost.runtime_rules`; op classes and the `Kernel` record in `compiler.cost.ops`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from compiler.cost.flops import dims, graph_flops, node_flops, numel
from compiler.cost.memory import weight_bytes
from compiler.cost.ops import (
    _CONV,
    _DQ,
    _HALF,
    _INT4,
    _INT8,
    _MATMUL,
    _Q,
    ACT_WIDTH,
    COMPUTE_CLASSES,
    CONV_CLASSES,
    FREE_OPS,
    MEMORY_CLASSES,
    NATIVE_FUSION,
    OP_CLASSES,
    WEIGHT_WIDTH,
    Kernel,
    _dtype_width,
    _is_const,
    _is_weight,
    _root,
    _through_free,
    op_class,
)
from compiler.cost.runtime_rules import (
    _merge_epilogues,
    _ort_dispatches,
    _ort_fuses_dq,
    _ort_nhwc_transposes,
    _result_quantized,
    _simulated_qdq,
    function_body_kernels,
    half_kernels,
    load_time_values,
    ort_half_plan,
)
from compiler.ir import Graph, Node, Value

__all__ = ["ACT_WIDTH", "COMPUTE_CLASSES", "CONV_CLASSES", "FREE_OPS", "MEMORY_CLASSES",
           "NATIVE_FUSION", "OP_CLASSES", "WEIGHT_WIDTH", "Kernel", "half_kernels", "kernels",
           "op_class", "resident_weight_bytes", "resolve_config", "weight_widths"]

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
    nodes = _with_bodies(graph, notes)
    prec: dict[int, str] = {}
    for n in nodes:
        prec[id(n)] = _sim_precision(n, cfg["precision"], profile, bind) if simulate \
            else _node_precision(n, native)
    runtime = cfg.get("runtime_precision") or "fp32"
    if runtime != "fp32":  # the runtime runs the float layers in half (a precision hint)
        for n in nodes:
            if prec[id(n)] == "fp32":
                prec[id(n)] = runtime
        unit = profile.unit(cfg["unit"]) if cfg["unit"] else profile.main_unit
        src = unit.peak_ops.get(runtime) if unit is not None else None
        notes.append(f"runtime {runtime} hint: float layers costed at {runtime} (peak: "
                     f"{src.source if src is not None else 'none published, fp32 used'})")
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
    folded = load_time_values(nodes)
    for n in nodes:
        op = n.op_type
        if n.outputs and all(id(o) in folded for o in n.outputs):
            free.add(id(n))  # computed once at load
            continue
        if ort and _ort_dispatches(n):
            continue
        if op in FREE_OPS or (op == _DQ and _is_const(n.inputs[0])) or (
                op == "Cast" and _is_const(n.inputs[0])):
            free.add(id(n))
        elif op == _DQ and native and (not ort or all(
                _ort_fuses_dq(c) for c, _ in n.outputs[0].uses)):
            free.add(id(n))  # merged into its reader by Q/DQ fusion
    plain: set[int] = set()  # convs on the runtime's plain (not blocked-layout) kernel
    if ort and simulate:
        from passes.quantize import result_after_relu

        for n in nodes:  # the lowering re-quantizes every int8 Conv result but a graph output
            if prec[id(n)] == "int8" and n.op_type in _SIM_CONV and \
                    result_after_relu(n).is_graph_output():
                prec[id(n)] = "fp32"
                plain.add(id(n))
    if ort and not simulate:
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
    wide: set[int] = set()  # nodes the runtime runs in fp32 between Casts it inserts
    casts: list[Kernel] = []
    if ort and not simulate and not half_kernels(cfg, profile, "Add") and any(
            v is not None and v.dtype in _HALF for n in nodes for v in n.inputs):
        wide, casts, dropped, through_cast = ort_half_plan(nodes, cfg, profile, bind, folded)
        free |= dropped  # the graph's own Casts that cancel against inserted ones
        plain |= {i for i in through_cast if by_id[i].op_type in _SIM_CONV}
    _merge_epilogues(nodes, cfg, free, find, parent, by_id)
    members: dict[int, list[Node]] = {}
    for n in nodes:
        if id(n) not in free:
            members.setdefault(find(id(n)), []).append(n)
    out: list[Kernel] = []
    kprec: dict[int, str] = {}
    kcls: dict[int, str] = {}
    widened = 0  # Conv/MatMul kernels without a half kernel on this unit
    for root, ns in members.items():
        ids = {id(n) for n in ns}
        fp32 = any(id(n) in wide for n in ns)
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
                nbytes += _read_bytes(v, ids, free, prec[id(n)], simulate, bind, fp32)
            for o in n.outputs:
                if o.is_graph_output() or any(id(c) not in ids for c, _ in o.uses):
                    w = 4.0 if fp32 and o.dtype in _HALF else _dtype_width(o.dtype)
                    nbytes += numel(o, bind) * (min(w, ACT_WIDTH.get(p, w)) if simulate
                                                else w)
        if all(n.op_type in FREE_OPS and n.op_type != "ConstantOfShape" for n in ns):
            nbytes = 0.0  # a view or shape read ONNX Runtime dispatches: no data moves
        if cls in COMPUTE_CLASSES and p in ("fp16", "bf16") and not half_kernels(
                cfg, profile, anchor.op_type):
            widened += 1
            if not fp32:  # simulated: fp32 weights and activations (no Casts costed)
                nbytes *= 2
            p = "fp32"
        name = anchor.name or anchor.op_type
        depth = 0.0
        if cls in COMPUTE_CLASSES and anchor.outputs and numel(anchor.outputs[0], bind):
            depth = node_flops(anchor, bind) / (2.0 * numel(anchor.outputs[0], bind))
        out.append(Kernel(name, tuple(n.op_type for n in ns), cls, p, flops, nbytes, depth,
                          id(anchor) in plain, _rows(anchor, bind) if cls == "norm" else 0.0,
                          _spatial(anchor, bind) if cls in CONV_CLASSES else 0.0))
        kprec[root], kcls[root] = p, cls
        for n in ns:
            if id(n) in wide:
                out += function_body_kernels(n, bind)
    if simulate and ort:
        out += _simulated_qdq(members, kprec, find, bind)
    if ort and native:
        out += _ort_nhwc_transposes(members, kprec, kcls, find, free, bind)
    if widened and simulate:
        notes.append(f"{cfg['backend']} has no half-precision kernel for {widened} Conv/MatMul "
                     "kernel(s) on this unit: costed in fp32 (the Casts it inserts are costed "
                     "once the graph is lowered)")
    elif wide:
        notes.append(f"{cfg['backend']} has no half-precision kernel for {len(wide)} node(s) on "
                     f"this unit ({widened} Conv/MatMul kernels): they run in fp32 between "
                     f"{len(casts)} Casts it inserts")
        out += casts
    return out, notes


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
    """A conv's output plane (H x W, or the product of its spatial dims); 0 without shape."""
    d = dims(node.outputs[0], bind) if node.outputs else None
    return float(max(1, math.prod(d[2:]))) if d and len(d) > 2 else 0.0


def _read_bytes(v: Value, ids: set[int], free: set[int], prec: str, simulate: bool,
                bind, fp32: bool = False) -> float:
    """Bytes a kernel reads for input `v` (0 if produced inside the kernel); `fp32`: the
    runtime runs the kernel in fp32, half tensors arrive (and half weights are kept) in fp32."""
    v, p = _through_free(v, free)
    if p is not None and id(p) in ids:
        return 0.0
    if fp32 and v.dtype in _HALF:
        return 4.0 * numel(v, bind)
    if _is_const(v) and simulate and prec in WEIGHT_WIDTH:
        return numel(v, bind) * min(WEIGHT_WIDTH[prec], _dtype_width(v.dtype))
    if v.const is not None:
        return float(v.const.nbytes)
    w = _dtype_width(v.dtype)
    return numel(v, bind) * (min(w, ACT_WIDTH.get(prec, w)) if simulate else w)


def _with_bodies(graph: Graph, notes: list[str]) -> list[Node]:
    """The graph's nodes with the bodies of its control flow: an If's costlier branch (by
    FLOPs; which one runs depends on data), a Loop/Scan body once (its trip count is data).
    Without them a model inside an If (silero-vad) would cost as one free node."""
    out: list[Node] = []
    for n in graph:
        out.append(n)
        bodies = list(n.subgraphs())
        if not bodies:
            continue
        if n.op_type == "If":
            bodies = [max(bodies, key=lambda g: (graph_flops(g), len(g)))]
            notes.append(f"{n.name or 'If'}: costed as its costlier branch")
        else:
            notes.append(f"{n.name or n.op_type}: {n.op_type} body costed once (trip count "
                         "unknown)")
        for body in bodies:
            out += _with_bodies(body, notes)
    return out


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
