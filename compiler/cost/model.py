"""Analytic cost model: roofline per kernel, precision-aware, fusion-aware, calibrated.

Kernels. Nodes sharing `meta["fusion_group"]["id"]` form one kernel (as in nn-Meter: a fused
group runs as one kernel, its internal tensors never go through memory). Backends that fuse on
their own (OpenVINO, TVM, TensorRT) also merge an elementwise node into the kernel producing its
input when that input has no other reader, and fold BatchNormalization into a preceding Conv.
ONNX Runtime's CPU fusions are narrower: with `fusion` on (level "all") a Conv or MatMul takes
at most two elementwise epilogues and elementwise chains stay separate kernels; with it off
("basic") only BatchNormalization folds. View
ops (Reshape, Squeeze, ...), Shape/Constant and DequantizeLinear of constant weights cost
nothing; with Q/DQ fusion a DequantizeLinear of an activation merges into its reader. ONNX
Runtime forms an integer Conv only for DQ -> Conv [-> Relu] -> Q; an int8 Conv whose result is
not re-quantized is costed as it runs there: a float Conv plus a weight DequantizeLinear.

Per kernel k on the configured compute unit (default: the profile's main unit):

    t_k = max(u_k F_k / (peak[p_k] * s_thr * eff[c_k, p_k]),  B_k * beta) + t_launch[c_k]
          for compute classes (conv, matmul, attention), and
    t_k = max(F_k / (peak[p_k] * s_thr),  B_k * beta) / eff[c_k] + t_launch
          for memory-bound classes (elementwise, norm, data: how well the runtime streams them)
    T   = t_call + sum_k t_k,   t_launch[conv] = t_launch + t_conv (layout reorders, packing)

For compute classes eff is further scaled by K / (K + K_half), K the reduction length of one
output (Cin/groups * kh * kw for a conv, the inner dimension of a GEMM): a short reduction
spends more of its time loading and storing accumulators (depthwise convs, thin 1x1 convs).
    beta = (f / eff_llc + (1 - f) / eff_bw) / bw,   f = min(1, LLC / (weights + peak acts))
    s_thr = (1 + (n - 1) pe) / (1 + (cores - 1) pe) for n < cores threads, else 1

f is the share of the model's bytes that stays in the unit's last-level cache between
inferences (0 where the profile gives no cache size): a GEMV whose weights fit in cache runs
well above DRAM bandwidth. pe is the fitted parallel efficiency of one more thread. u_k =
`unfused` (fitted) for convs when the runtime's own graph fusion is off (ONNX Runtime "basic":
no NCHWc layouts, no Conv+activation fusion) and for a conv the runtime runs on its plain kernel
for another reason (ONNX Runtime's int8 Conv rule below), else 1.

F_k = FLOPs (compiler.cost.flops), B_k = bytes read from outside the kernel plus bytes
written that leave it, c_k the op class of its anchor node (conv, dwconv = depthwise conv,
matmul, attention, elementwise, norm, data), p_k its compute precision (s_thr as above).
Depthwise convs are their own class: their kernels differ (an int8 depthwise conv is measured
4x slower than fp32 with ONNX Runtime on this host). Precision comes from the graph: a node
reading a DequantizeLinear of
an int8 (int4) constant computes in int8 (int4-weight, i.e. fp16/fp32 compute with half-byte
weights) and reads 1 (0.5) byte per weight; a node whose float inputs are fp16/bf16 (Cast
regions) computes in fp16/bf16. A graph not lowered yet can be costed for a precision policy
(`config["precision"]`): every Conv/MatMul/Gemm with a constant weight is *simulated* at that
precision ("mixed": int8 where the dot product is at least 64 long, else float) - a stand-in
until the mixed-precision pass lowers the graph, stated in `Prediction.assumptions`.

Efficiencies are stored as inverse efficiencies (1/eff >= 0) in `Params`; priors here are
generic, `compiler.cost.calibration` fits them per (device, backend) from measurements.

Memory = m_w * weight bytes + m_a * peak live activations (`compiler.cost.memory`) + base.
Energy = T * P(power mode): the device is assumed to draw its power-mode budget (the host: its
RAPL package limit) while it runs; idle power and DVFS are not modelled, so this is an upper
bound of the energy of one inference, good for ranking configurations, not for battery sizing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx

from compiler.cost.flops import dims, node_flops, numel
from compiler.cost.memory import ALIAS_OPS, activation_liveness, weight_bytes
from compiler.ir import Graph, Node, Value, is_constant

__all__ = ["OP_CLASSES", "Kernel", "Params", "Prediction", "bindings_from_shapes",
           "half_kernels", "kernels",
           "op_class", "predict", "prior_params", "resolve_config", "runtime_fusion_off",
           "thread_scale", "threads_used", "time_kernels"]

OP_CLASSES = ("conv", "dwconv", "matmul", "attention", "elementwise", "norm", "data")
CONV_CLASSES = ("conv", "dwconv")  # dwconv: depthwise (one input channel per group)
MEMORY_CLASSES = ("elementwise", "norm", "data")  # their efficiency scales the whole kernel
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
_ACT_WIDTH = {"int8": 1.0, "fp16": 2.0, "bf16": 2.0}  # simulated low-precision activations
_WIDTH = {"fp32": 4.0, "fp16": 2.0, "bf16": 2.0, "int8": 1.0, "int4-weight": 0.5}
NATIVE_FUSION = {"openvino": True, "tvm": True, "tensorrt": True, "tosa": True, "hls": True}
UNCALIBRATED_UNCERTAINTY = 0.5


def eff_key(cls: str, prec: str) -> str:
    """Efficiency-table key: compute classes per precision, memory-bound classes alone."""
    if cls in MEMORY_CLASSES:
        return cls
    p = {"bf16": "fp16", "int4-weight": "int4"}.get(prec, prec)
    return f"{cls}/{p}"


EFF_KEYS = tuple(["elementwise", "norm", "data"] + [
    f"{c}/{p}" for c in COMPUTE_CLASSES for p in ("fp32", "fp16", "int8", "int4")])


@dataclass
class Params:
    """Inverse efficiencies and overheads of one (device, backend); see the module docstring."""

    inv_eff: dict[str, float]
    inv_bw: float = 1.5
    launch_us: float = 5.0
    call_us: float = 20.0
    conv_launch_us: float = 0.0  # extra fixed cost of a conv kernel (layout reorders, packing)
    depth_half: float = 0.0  # reduction length at which a GEMM kernel reaches half its efficiency
    row_ns: float = 0.0  # fixed cost per row of a normalisation/reduction kernel
    inv_bw_cache: float = 0.4  # last-level-cache bandwidth = DRAM bandwidth / inv_bw_cache
    par_eff: float = 0.9  # each extra thread adds par_eff of one thread's speed
    unfused: float = 1.3  # conv slow-down when the runtime's own fusion/layout passes are off
    measured: tuple[str, ...] = ()  # efficiency keys the fit had measurements for ("" = n/a)
    mem_w: float = 1.0
    mem_a: float = 1.0
    mem_base_mb: float = 0.0
    uncertainty: float = UNCALIBRATED_UNCERTAINTY
    source: str = "prior: generic efficiencies, not calibrated"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Params:
        return cls(**{k: (dict(v) if isinstance(v, Mapping) else tuple(v) if isinstance(
            v, list) else v) for k, v in d.items()})


def prior_params(profile, backend: str, unit: str | None = None) -> Params:
    """Generic priors. CPU: ~50% of measured GEMM peak for conv/matmul fp32 (MLAS/oneDNN reach
    60-80% on large GEMMs, less on small layers), 30% for attention GEMMs (small, batched).
    GPU/NPU: an Ampere-class prior of ~40% of dense tensor-core peak for int8/fp16 convs at
    batch 1 (cf. MLPerf Orin SingleStream ResNet-50 ~ 8 TOPS effective of 85 dense), 30% for
    matmuls and attention; memory-bound kernels reach ~65% of DRAM bandwidth."""
    u = profile.unit(unit) if unit else profile.main_unit
    kind = u.kind if u is not None else "cpu"
    accel = kind in ("gpu", "dla", "npu", "fpga")
    base = {"conv": 2.5, "dwconv": 5.0, "matmul": 3.3, "attention": 3.3} if accel else \
        {"conv": 2.0, "dwconv": 4.0, "matmul": 2.0, "attention": 3.3}
    inv = {"elementwise": 1.0, "norm": 2.0, "data": 1.5}
    for k in EFF_KEYS:
        if "/" in k:
            cls = k.split("/")[0]
            inv[k] = base[cls] * (1.5 if k.endswith("/int4") else 1.0)
    if backend == "tvm":  # default schedules, no tuning: on this host TVM's fitted GEMM
        # efficiency is 3.3x below ONNX Runtime's (MLAS), its convs 12x (benchmarks/cost.py)
        inv.update({k: v * 3.0 for k, v in inv.items() if "/" in k})
    # GPU: back-to-back kernels on one stream leave ~1-2 us gaps (launches are asynchronous and
    # overlap execution); DLA/NPU: per-layer command overhead; CPU: one runtime op dispatch.
    launch = {"gpu": 1.5, "dla": 10.0, "npu": 2.0, "fpga": 0.5}.get(kind, 3.0)
    call = {"gpu": 30.0, "dla": 50.0}.get(kind, 20.0)
    # CPU convs pay a fixed cost per call on top (NCHWc layout reorders, im2col buffers)
    # Short reductions (depthwise convs, 1x1 convs on few channels, attention heads) spend more
    # of each output's time loading and storing accumulators: efficiency x K / (K + depth_half)
    return Params(inv, inv_bw=1.5, launch_us=launch, call_us=call,
                  conv_launch_us=0.0 if accel else 2.0, depth_half=0.0 if accel else 32.0,
                  row_ns=0.0 if accel else 5.0)


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


@dataclass
class Prediction:
    """What `predict` returns; `uncertainty` is relative (0.3 = +-30%)."""

    latency_ms: float
    memory_mb: float
    energy_mj: float
    uncertainty: float
    nodes: list[dict[str, Any]] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        """The four numbers compile() records as `Artifact.predicted`."""
        return {"latency_ms": round(self.latency_ms, 4), "memory_mb": round(self.memory_mb, 3),
                "energy_mj": round(self.energy_mj, 4),
                "uncertainty": round(self.uncertainty, 3)}

    def to_dict(self) -> dict[str, Any]:
        return {**self.summary(), "nodes": self.nodes, "assumptions": self.assumptions,
                "config": self.config}


def bindings_from_shapes(graph: Graph, shapes: Mapping[str, Any] | None) -> dict[str, int]:
    """Symbol bindings from user input shapes, e.g. {"pixel_values": (1, 3, 224, 224)}."""
    out: dict[str, int] = {}
    for v in graph.inputs:
        dims_ = (shapes or {}).get(v.name)
        if dims_ is not None and v.shape is not None:
            out.update({d: int(n) for d, n in zip(v.shape, dims_) if isinstance(d, str)})
    return out


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
    if op in _DATA:
        return "data"
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


def _sim_precision(node: Node, policy: str, profile, bind) -> str:
    if node.op_type not in ("Conv", "MatMul", "Gemm") or len(node.inputs) < 2 or \
            not _is_weight(node.inputs[1]):
        return "fp32"
    if policy == "mixed":
        w = dims(node.inputs[1], bind) or [1, 1]
        if node.op_type == "Conv":
            k = numel(node.inputs[1], bind) // max(w[0], 1)
        else:
            k = w[-1] if node.op_type == "Gemm" and node.attr("transB", 0) else w[0]
        if k >= 64:
            return "int8"
        return "fp16" if profile.peak("fp16") > 0 else "fp32"
    if policy == "int4-weight" and node.op_type == "Conv":
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
    for n in nodes:
        op = n.op_type
        if op in FREE_OPS or (op == _DQ and _is_const(n.inputs[0])) or (
                op == "Cast" and _is_const(n.inputs[0])):
            free.add(id(n))
        elif op == _DQ and native:
            free.add(id(n))  # merged into its reader by Q/DQ fusion
    plain: set[int] = set()  # convs on the runtime's plain (not blocked-layout) kernel
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
    widen = not half_kernels(cfg, profile)
    if widen and (cfg["precision"] in ("fp16", "bf16") or any(
            n.op_type == "Cast" and n.attr("to") in _HALF for n in nodes)):
        notes.append(f"{cfg['backend']} has no half-precision Conv/MatMul kernels on this CPU: "
                     "half-precision regions run in fp32 between Casts it inserts")
    out: list[Kernel] = []
    kprec: dict[int, str] = {}
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
                    nbytes += numel(o, bind) * (min(w, _ACT_WIDTH.get(p, w)) if simulate
                                                else w)
        if widen and (p in ("fp16", "bf16") or any(
                o.dtype in _HALF for o in anchor.outputs if o is not None)):
            p, nbytes = "fp32", 2 * nbytes  # run in fp32 between runtime-inserted Casts
        name = anchor.name or anchor.op_type
        depth = 0.0
        if cls in COMPUTE_CLASSES and anchor.outputs and numel(anchor.outputs[0], bind):
            depth = node_flops(anchor, bind) / (2.0 * numel(anchor.outputs[0], bind))
        out.append(Kernel(name, tuple(n.op_type for n in ns), cls, p, flops, nbytes, depth,
                          id(anchor) in plain, _rows(anchor, bind) if cls == "norm" else 0.0))
        kprec[root] = p
    if simulate and cfg["backend"] == "onnxruntime":
        out += _simulated_qdq(members, kprec, find, bind)
    return out, notes


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
                    out.append(Kernel(f"{v.name}/q", ("QuantizeLinear",), "elementwise",
                                      "fp32", 3.0 * numel(v, bind), 5.0 * numel(v, bind)))
            for o in n.outputs:
                readers = [c for c, _ in o.uses if id(c) not in ids]
                if o.is_graph_output() or any(
                        kprec.get(find(id(c)), "fp32") != "int8" for c in readers):
                    out.append(Kernel(f"{o.name}/dq", ("DequantizeLinear",), "elementwise",
                                      "fp32", 2.0 * numel(o, bind), 5.0 * numel(o, bind)))
    return out


# ONNX Runtime's CPU fusions (level "all") give a Conv or MatMul at most two elementwise
# epilogues (NCHWc Conv + Add + activation, MatMul + Add -> Gemm + activation); it never merges
# elementwise chains on their own. Level "basic" folds only BatchNormalization into a Conv.
ORT_EPILOGUES = 2


def half_kernels(cfg: Mapping[str, Any], profile) -> bool:
    """Whether the backend computes fp16/bf16 Conv/MatMul in half precision on the unit. ONNX
    Runtime's CPU execution provider has half-precision GEMM/Conv kernels (MLAS) only on Arm
    cores with fp16 arithmetic; elsewhere it inserts Casts and runs those nodes in fp32."""
    u = profile.unit(cfg["unit"]) if cfg["unit"] else profile.main_unit
    if cfg["backend"] != "onnxruntime" or u is None or u.kind != "cpu":
        return True
    return "fp16" in u.isa


def _merge_epilogues(nodes: list[Node], cfg: Mapping[str, Any], free: set[int], find, parent,
                     by_id) -> None:
    """Merge elementwise/BatchNormalization nodes into the kernel producing their input, as
    the backend's runtime does: native fusers (OpenVINO, TVM, TensorRT) merge any elementwise
    chain into conv/matmul/elementwise kernels; ONNX Runtime only as `ORT_EPILOGUES` says."""
    native = NATIVE_FUSION.get(cfg["backend"], False)
    cap = None if native else (ORT_EPILOGUES if cfg["fusion"] else 0)
    merged: dict[int, int] = {}
    for n in nodes:
        cls = op_class(n)
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
            else:
                ok = acls in ("conv", "dwconv", "matmul") and merged.get(root, 0) < cap
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


def _read_bytes(v: Value, ids: set[int], free: set[int], prec: str, simulate: bool,
                bind) -> float:
    """Bytes a kernel reads for input `v` (0 if produced inside the kernel)."""
    p = v.producer
    while p is not None and id(p) in free and p.inputs and p.inputs[0] is not None and \
            p.op_type != "Constant":
        v, p = p.inputs[0], p.inputs[0].producer  # look through views and folded DQ/Cast
    if p is not None and id(p) in ids:
        return 0.0
    if _is_const(v) and simulate and prec in _WIDTH:
        return numel(v, bind) * min(_WIDTH[prec], _dtype_width(v.dtype))
    if v.const is not None:
        return float(v.const.nbytes)
    w = _dtype_width(v.dtype)
    return numel(v, bind) * (min(w, _ACT_WIDTH.get(prec, w)) if simulate else w)


def _peak(profile, prec: str, unit: str | None, mode: str | None) -> float:
    for p in {"int8": ("int8", "fp16", "fp32"), "fp16": ("fp16", "fp32"),
              "bf16": ("bf16", "fp16", "fp32"), "int4-weight": ("int4-weight", "fp32")
              }.get(prec, (prec, "fp32")):
        v = profile.peak(p, unit, mode)
        if v > 0:
            u = profile.unit(unit) if unit else profile.main_unit
            return v / (u.count if u is not None and u.kind == "dla" else 1)  # one DLA core
    return profile.peak("fp32", None, mode) or 1e9


def threads_used(threads: int, cores: int) -> int:
    """Threads a run gets: `threads` when it asks for fewer than `cores`, else all cores."""
    return threads if 0 < threads < cores else cores


def thread_scale(threads, cores, par_eff):
    """Speed of `threads` threads relative to all `cores` (1 + (n - 1) * par_eff threads'
    worth each); works elementwise on numpy arrays (the fit calls it that way)."""
    return (1 + (threads - 1) * par_eff) / (1 + (cores - 1) * par_eff)


def runtime_fusion_off(cfg: Mapping[str, Any]) -> bool:
    """The runtime's own graph fusion is off (ONNX Runtime "basic"); native fusers ignore it."""
    return not cfg["fusion"] and not NATIVE_FUSION.get(cfg["backend"], False)


def cache_fraction(profile, unit: str | None, footprint: float) -> float:
    """The share of a model's bytes that stays in the last-level cache between inferences:
    min(1, cache / (weights + peak activations)); 0 where the unit's cache is unknown."""
    u = profile.unit(unit) if unit else profile.main_unit
    c = getattr(u, "cache_bytes", None) if u is not None else None
    if c is None or not c.value or footprint <= 0:
        return 0.0
    return min(1.0, c.value / footprint)


def time_kernels(ks: list[Kernel], params: Params, profile, config: Mapping[str, Any],
                 footprint: float = 0.0) -> tuple[float, list[tuple[float, str]]]:
    """Total seconds and (seconds, bound) per kernel. `footprint`: the model's weight plus
    peak activation bytes, for the cached share of memory traffic."""
    cfg = resolve_config(config, profile)
    unit, mode = cfg["unit"], cfg["power_mode"]
    u = profile.unit(unit) if unit else profile.main_unit
    cores = (u.cores if u is not None else None) or 1
    s_thr = thread_scale(threads_used(cfg["threads"], cores), cores, params.par_eff)
    f = cache_fraction(profile, unit, footprint)
    sec_per_byte = (f * params.inv_bw_cache + (1 - f) * params.inv_bw) / profile.bandwidth(mode)
    off = runtime_fusion_off(cfg)
    per, total = [], params.call_us * 1e-6
    for k in ks:
        inv = params.inv_eff.get(eff_key(k.op_class, k.precision), 2.0)
        conv = k.op_class in CONV_CLASSES
        fixed = params.launch_us + (params.conv_launch_us if conv else 0.0)
        if conv and (off or k.plain):
            inv *= params.unfused
        mem_bound = k.op_class in MEMORY_CLASSES
        if k.depth > 0:
            inv *= 1.0 + params.depth_half / k.depth
        tc = k.flops * (1.0 if mem_bound else inv) / (_peak(profile, k.precision, unit, mode)
                                                      * s_thr)
        tm = k.bytes * sec_per_byte
        t = max(tc, tm) * (inv if mem_bound else 1.0) + fixed * 1e-6 + k.rows * params.row_ns \
            * 1e-9
        per.append((t, "compute" if tc >= tm else "memory"))
        total += t
    return total, per


def _weight_width(graph: Graph, cfg: dict, profile, bind) -> dict[int, float]:
    """Simulated bytes per weight element for weights read by simulated-precision layers."""
    out: dict[int, float] = {}
    if cfg["precision"] == "fp32" or _lowered(graph):
        return out
    for n in graph:
        p = _sim_precision(n, cfg["precision"], profile, bind)
        if p != "fp32" and n.inputs[1] is not None:
            out[id(_root(n.inputs[1]))] = _WIDTH.get(p, 4.0)
    return out


def predict(graph: Graph, config: Mapping[str, Any] | None, profile, *,
            bindings: Mapping[str, int] | None = None, calibration: Any = None) -> Prediction:
    """Predicted latency, memory and energy of one inference of `graph` under `config` on
    `profile`. `calibration`: a `Calibration`/`Params`; None loads the stored one for (device,
    backend), else generic priors with a wide uncertainty."""
    cfg = resolve_config(config, profile)
    bind = dict(bindings or {})
    if any(o.shape is None for n in graph for o in n.outputs[:1] if n.op_type not in FREE_OPS):
        from passes.shape_inference import infer_shapes

        infer_shapes(graph)
    params, notes = _params(calibration, profile, cfg)
    ks, more = kernels(graph, cfg, profile, bind)
    notes += more
    widths = _weight_width(graph, cfg, profile, bind)
    wbytes = weight_bytes(graph, lambda v: widths.get(id(v)), bind)
    acts = activation_liveness(graph, bind, fused=True).peak_bytes
    seconds, per = time_kernels(ks, params, profile, cfg, wbytes + acts)
    mem = params.mem_w * wbytes + params.mem_a * acts + params.mem_base_mb * 2**20
    watts = profile.power(cfg["power_mode"]).watts.value
    unc = params.uncertainty + (0.1 if any("simulated" in a for a in notes) else 0.0)
    if bind:
        notes.append(f"symbolic dims bound: {bind}; others = 1")
    rows = [{"kernel": k.name, "ops": list(k.ops), "class": k.op_class, "precision": k.precision,
             "flops": k.flops, "bytes": k.bytes, "ms": round(t * 1e3, 5), "bound": b}
            for k, (t, b) in zip(ks, per)]
    return Prediction(seconds * 1e3, mem / 2**20, seconds * 1e3 * watts, unc, rows, notes,
                      {k: v for k, v in cfg.items() if v is not None})


def _params(calibration: Any, profile, cfg: dict) -> tuple[Params, list[str]]:
    if isinstance(calibration, Params):
        return calibration, [f"calibration: {calibration.source}"]
    if calibration is None:
        from compiler.cost.calibration import load_calibration

        calibration = load_calibration(profile, cfg["backend"])
    if calibration is not None:
        return calibration.params_for(profile), [f"calibration: {calibration.describe()}"]
    p = prior_params(profile, cfg["backend"], cfg["unit"])
    return p, [f"no calibration for {profile.name}/{cfg['backend']}: generic priors, "
               f"uncertainty +-{p.uncertainty:.0%}"]
