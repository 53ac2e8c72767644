"""What the cost model knows about ops: their classes, widths, and the kernel record.

Shared by `compiler.cost.kernels` (how a runtime groups a graph into kernels) and
`compiler.cost.runtime_rules` (what particular runtimes do on top).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx

from compiler.cost.memory import ALIAS_OPS
from compiler.ir import Node, Value, is_constant

__all__ = ["ACT_WIDTH", "COMPUTE_CLASSES", "CONV_CLASSES", "FREE_OPS", "MEMORY_CLASSES",
           "NATIVE_FUSION", "OP_CLASSES", "WEIGHT_WIDTH", "Kernel", "op_class"]

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
