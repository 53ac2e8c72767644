"""The IR as a chain of dataflow layers, channels-last: what an FPGA dataflow design computes.

hls4ml (and any streaming FPGA design) computes a chain of layers on channels-last tensors
(pixels stream in, all channels of a pixel side by side). This module reads such a chain out of
the IR so that the fixed-point policy (passes/fixed_point.py), the exact fixed-point reference
(compiler/fixed_sim.py), the resource model (compiler/cost/fpga.py) and the hls4ml backend
(targets/hls.py) all see the same layers:

- Gemm / MatMul (+ Add of a constant bias) -> dense, weight [n_in, n_out];
- Conv (group 1) -> conv2d, weight [kh, kw, c_in, c_out]; Conv with group = c_in = c_out ->
  dwconv2d, weight [kh, kw, c, 1]; stride, explicit pads, dilation 1;
- Relu, MaxPool (no padding), GlobalAveragePool, Flatten / Reshape to [batch, n];
- Identity / Dropout vanish.

ONNX flattens NCHW in (c, y, x) order, the channels-last stream in (y, x, c) order; the rows
of the dense layer after such a Flatten are permuted so the product is unchanged:
row (y*W + x)*C + c of the new weight is row c*H*W + y*W + x of the old one.

Fixed-point types live in the graph: `node.meta["fixed_point"]` on the node that names a layer
holds {"result", "weight", "bias", "accum"} as ap_fixed strings; the first layer's node also
carries "input" (the type the input is converted to).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from compiler.errors import UnsupportedOpError
from compiler.fixedpoint import FixedType
from compiler.ir import Graph, Node, constant_value

__all__ = ["FpgaLayer", "META_KEY", "input_type", "layers_from_graph", "to_channels_last",
           "from_channels_last", "WEIGHT_KINDS"]

META_KEY = "fixed_point"
WEIGHT_KINDS = ("dense", "conv2d", "dwconv2d")
_SKIP = {"Identity", "Dropout"}


@dataclass
class FpgaLayer:
    """One layer of the chain; shapes are channels-last without the batch dim."""

    name: str  # the IR node that names it (its meta holds the fixed-point types)
    kind: str  # dense | conv2d | dwconv2d | relu | maxpool2d | gap2d | flatten
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    output: str  # IR value holding the layer's result (calibration ranges are read there)
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, bottom, left, right
    types: dict[str, FixedType] = field(default_factory=dict)
    _codes: dict = field(default_factory=dict, repr=False, compare=False)

    def codes(self, what: str, t: FixedType) -> np.ndarray:
        """Integer codes of the weight or bias ("weight" | "bias") in type `t`, cached: the
        policy tries many types, each costing a pass over every weight."""
        key = (what, t)
        if key not in self._codes:
            if len(self._codes) > 16:
                self._codes.clear()
            self._codes[key] = t.codes(self.weight if what == "weight" else self.bias)
        return self._codes[key]

    @property
    def n_mult(self) -> int:
        """Multiplications per output pixel (dense: per inference)."""
        if self.weight is None:
            return 0
        return int(self.weight.size)

    @property
    def pixels(self) -> int:
        """Output pixels the layer computes per inference (1 for dense/flatten)."""
        return int(np.prod(self.out_shape[:-1])) if len(self.out_shape) == 3 else 1


def _const(node: Node, i: int) -> np.ndarray | None:
    v = node.inputs[i] if len(node.inputs) > i else None
    return None if v is None else constant_value(v)


def _live_inputs(node: Node) -> list:
    return [v for v in node.inputs if v is not None and constant_value(v) is None]


def _fail(node: Node, why: str) -> UnsupportedOpError:
    return UnsupportedOpError(f"node {node.name or node.op_type!r} ({node.op_type}) cannot be "
                              f"built as an FPGA dataflow layer: {why}")


def _input_shape(graph: Graph) -> tuple[int, ...]:
    live = [v for v in graph.inputs if v.const is None]
    if len(live) != 1:
        raise UnsupportedOpError(f"an FPGA dataflow design takes one input; the model has "
                                 f"{len(live)}")
    shape = live[0].shape
    if shape is None or not all(isinstance(d, int) for d in shape[1:]) or len(shape) not in (2,
                                                                                         4):
        raise UnsupportedOpError(
            f"input {live[0].name!r} needs a static shape [batch, n] or [batch, C, H, W] "
            f"(got {shape}); pass shapes=")
    return tuple(int(d) for d in shape[1:])


def _cl(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (shape[1], shape[2], shape[0]) if len(shape) == 3 else shape


def _dense(node: Node, w: np.ndarray, b: np.ndarray | None, shape, flat_from) -> FpgaLayer:
    n_in, n_out = w.shape
    if len(shape) != 1 or shape[0] != n_in:
        raise _fail(node, f"expects a flat input of {n_in}, gets {shape}")
    if flat_from is not None and flat_from[0] * flat_from[1] > 1:
        h, wd, c = flat_from
        idx = np.arange(n_in).reshape(c, h, wd).transpose(1, 2, 0).ravel()
        w = w[idx]
    bias = np.zeros(n_out, np.float32) if b is None else np.broadcast_to(b, (n_out,))
    return FpgaLayer(node.name, "dense", (n_in,), (n_out,), node.outputs[0].name,
                     np.ascontiguousarray(w, np.float32), np.array(bias, np.float32))


def _conv(node: Node, shape) -> FpgaLayer:
    w = _const(node, 1)
    if w is None or w.ndim != 4 or len(shape) != 3:
        raise _fail(node, "only 2-D convolutions with constant weights on [C, H, W] inputs")
    if any(d != 1 for d in node.attr("dilations", [1, 1])):
        raise _fail(node, "dilation other than 1")
    if node.attr("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        raise _fail(node, "auto_pad; export with explicit pads")
    h, wd, c = shape
    cout, cin_g, kh, kw = w.shape
    group = int(node.attr("group", 1))
    pads = tuple(node.attr("pads", [0, 0, 0, 0]))
    sh, sw = tuple(node.attr("strides", [1, 1]))
    top, left, bottom, right = (int(p) for p in pads)
    oh = (h + top + bottom - kh) // sh + 1
    ow = (wd + left + right - kw) // sw + 1
    b = _const(node, 2)
    bias = np.zeros(cout, np.float32) if b is None else b.astype(np.float32)
    if group == 1 and cin_g == c:
        kind, wt = "conv2d", w.transpose(2, 3, 1, 0)
    elif group == c and cout == c and cin_g == 1:
        kind, wt = "dwconv2d", w.transpose(2, 3, 0, 1)
    else:
        raise _fail(node, f"grouped convolution (group {group}) other than depthwise")
    return FpgaLayer(node.name, kind, (h, wd, c), (oh, ow, cout), node.outputs[0].name,
                     np.ascontiguousarray(wt, np.float32), bias, (kh, kw), (sh, sw),
                     (top, bottom, left, right))


def layers_from_graph(graph: Graph) -> list[FpgaLayer]:
    """The chain of layers `graph` computes, with the fixed-point types its nodes carry."""
    shape = _cl(_input_shape(graph))
    cur = next(v for v in graph.inputs if v.const is None)
    layers: list[FpgaLayer] = []
    flat_from = None
    nodes = [n for n in graph if n.op_type != "Constant"]
    skip: set[int] = set()
    for i, node in enumerate(nodes):
        if i in skip:
            continue
        live = _live_inputs(node)
        if node.domain:
            raise _fail(node, "custom-domain op")
        if len(live) != 1 or live[0] is not cur:
            raise _fail(node, "the design is a chain of layers; this node branches or merges "
                        "(residual connections are not supported)")
        op, layer = node.op_type, None
        if op in _SKIP:
            cur = node.outputs[0]
            continue
        if op == "Gemm":
            w, b = _const(node, 1), _const(node, 2)
            if w is None or node.attr("transA", 0):
                raise _fail(node, "Gemm needs a constant B and transA = 0")
            w = w.T if node.attr("transB", 0) else w
            w = w * float(node.attr("alpha", 1.0))
            b = None if b is None else b * float(node.attr("beta", 1.0))
            layer = _dense(node, w, b, shape, flat_from)
        elif op == "MatMul":
            w = _const(node, 1)
            if w is None or w.ndim != 2:
                raise _fail(node, "MatMul needs a constant 2-D weight as its second input")
            nxt = nodes[i + 1] if i + 1 < len(nodes) else None
            b = None
            if nxt is not None and nxt.op_type == "Add" and nxt.inputs[0] is node.outputs[0] \
                    and len(node.outputs[0].consumers()) == 1:
                b = _const(nxt, 1)
            layer = _dense(node, w, b, shape, flat_from)
            if b is not None:
                skip.add(i + 1)
                layer.output = nxt.outputs[0].name
                cur = nxt.outputs[0]
        elif op == "Conv":
            layer = _conv(node, shape)
        elif op == "Relu":
            layer = FpgaLayer(node.name, "relu", shape, shape, node.outputs[0].name)
        elif op == "MaxPool":
            k = tuple(node.attr("kernel_shape"))
            s = tuple(node.attr("strides", k))
            if any(int(p) for p in node.attr("pads", [0, 0, 0, 0])) or len(shape) != 3:
                raise _fail(node, "MaxPool with padding")
            out = ((shape[0] - k[0]) // s[0] + 1, (shape[1] - k[1]) // s[1] + 1, shape[2])
            layer = FpgaLayer(node.name, "maxpool2d", shape, out, node.outputs[0].name,
                              kernel=k, stride=s)
        elif op == "GlobalAveragePool":
            if len(shape) != 3:
                raise _fail(node, "GlobalAveragePool on a non-image tensor")
            layer = FpgaLayer(node.name, "gap2d", shape, (1, 1, shape[2]),
                              node.outputs[0].name)
        elif op in ("Flatten", "Reshape"):
            if op == "Reshape":
                tgt = _const(node, 1)
                if tgt is None or len(tgt) != 2 or int(tgt[1]) not in (-1, int(np.prod(shape))):
                    raise _fail(node, "only a Reshape to [batch, n] is supported")
            flat_from = shape if len(shape) == 3 else None
            n = int(np.prod(shape))
            layer = FpgaLayer(node.name, "flatten", shape, (n,), node.outputs[0].name)
        else:
            raise _fail(node, "no hls4ml layer for this op in edgec's FPGA flow")
        if layer.kind != "flatten" and layer.kind != "relu":
            flat_from = None
        meta = node.meta.get(META_KEY) or {}
        layer.types = {k: FixedType.parse(v) for k, v in meta.items() if k != "input"}
        layers.append(layer)
        shape = layer.out_shape
        if not (op == "MatMul" and i + 1 in skip):
            cur = node.outputs[0]
    outs = [v for v in graph.outputs]
    if len(outs) != 1 or outs[0] is not cur:
        raise UnsupportedOpError("an FPGA dataflow design has one output, the last layer's")
    if not any(layer.kind in WEIGHT_KINDS for layer in layers):
        raise UnsupportedOpError("the model has no dense or convolution layer to build")
    return layers


def input_type(graph: Graph) -> FixedType | None:
    """The input's fixed-point type, stored on the first layer's node (None: not assigned)."""
    for node in graph:
        meta = node.meta.get(META_KEY)
        if meta and "input" in meta:
            return FixedType.parse(meta["input"])
    return None


def to_channels_last(x: np.ndarray) -> np.ndarray:
    """[B, C, H, W] -> [B, H, W, C]; [B, n] unchanged."""
    x = np.asarray(x)
    return x.transpose(0, 2, 3, 1) if x.ndim == 4 else x


def from_channels_last(y: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The chain's output [B, *shape] in ONNX layout ([B, C, H, W] for an image)."""
    y = np.asarray(y).reshape((-1, *shape))
    return y.transpose(0, 3, 1, 2) if y.ndim == 4 else y
