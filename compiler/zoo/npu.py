"""Torch-free ONNX builders of the NPU-class models (random weights, seed 0, opset 17).

- `ds_cnn(...)`: DS-CNN keyword spotting (Zhang et al. 2017, "Hello Edge"; the MLPerf Tiny KWS
  model): 49x10 MFCC input, a 10x4 stride-2 Conv, 4 depthwise-separable blocks (DW 3x3 + PW
  1x1, BN folded, ReLU), average pooling over the map, a 12-way FC.
- `mobilenet_v2(size, width)`: MobileNetV2 (Sandler et al. 2018) inverted residual blocks
  (1x1 expand + ReLU6, DW 3x3 + ReLU6, 1x1 project, residual Add when shapes match), the
  standard (t, c, n, s) table, 1280-wide head, global average pool, 1000-way FC.
- `conv_softmax()`: Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm -> Softmax (the
  Softmax has no NPU lowering: a host-CPU remainder).
- `big_activation(hw)`: one 3x3 Conv on a [1, 16, hw, hw] input: feature maps that outgrow an
  NPU's SRAM.

Weights use He-scaled normal init so activations keep a sane range through depth; these are
structure and speed models, not accurate classifiers.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = ["big_activation", "conv_softmax", "ds_cnn", "mobilenet_v2"]


class _G:
    def __init__(self, seed: int = 0) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.rng = np.random.default_rng(seed)
        self.n = 0

    def name(self, hint: str) -> str:
        self.n += 1
        return f"{hint}_{self.n}"

    def init(self, arr: np.ndarray, hint: str) -> str:
        name = self.name(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], hint: str | None = None, **attrs) -> str:
        out = self.name(hint or op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def conv(self, x: str, cin: int, cout: int, k, stride=1, group: int = 1, act: str | None =
             "relu", pad=None) -> str:
        kh, kw = (k, k) if isinstance(k, int) else k
        fan = cin // group * kh * kw
        w = self.rng.normal(0, np.sqrt(2.0 / fan), (cout, cin // group, kh, kw))
        b = self.rng.normal(0, 0.05, cout)
        st = [stride, stride] if isinstance(stride, int) else list(stride)
        pads = pad if pad is not None else [kh // 2, kw // 2, (kh - 1) // 2, (kw - 1) // 2]
        y = self.node("Conv", [x, self.init(w, "w"), self.init(b, "b")], "conv",
                      kernel_shape=[kh, kw], strides=st, pads=pads, group=group)
        if act == "relu":
            return self.node("Relu", [y])
        if act == "relu6":
            return self.node("Clip", [y, self.init(np.array(0.0), "lo"),
                                      self.init(np.array(6.0), "hi")])
        return y

    def model(self, x: str, shape: list[int], y: str, out_shape: list[int], name: str,
              doc: str) -> onnx.ModelProto:
        g = helper.make_graph(self.nodes, name,
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, out_shape)],
                              self.inits)
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)],
                              producer_name="edgec-zoo", doc_string=doc)
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m


def ds_cnn(filters: int = 64, blocks: int = 4, classes: int = 12) -> onnx.ModelProto:
    """DS-CNN (small: 64 filters, 4 blocks): `input` [1, 1, 49, 10] -> `logits` [1, 12]."""
    g = _G()
    y = g.conv("input", 1, filters, (10, 4), stride=2, pad=[4, 1, 5, 2])
    for _ in range(blocks):
        y = g.conv(y, filters, filters, 3, group=filters)
        y = g.conv(y, filters, filters, 1)
    y = g.node("GlobalAveragePool", [y])
    y = g.node("Flatten", [y], axis=1)
    w = g.rng.normal(0, np.sqrt(1.0 / filters), (filters, classes))
    y = g.node("Gemm", [y, g.init(w, "fc_w"), g.init(np.zeros(classes), "fc_b")], "logits")
    return g.model("input", [1, 1, 49, 10], y, [1, classes], "ds_cnn", ds_cnn.__doc__)


def mobilenet_v2(size: int = 224, width: float = 1.0, classes: int = 1000) -> onnx.ModelProto:
    """MobileNetV2: `input` [1, 3, size, size] -> `logits` [1, classes]."""
    def ch(c: float) -> int:
        return max(8, int(c * width + 4) // 8 * 8)

    g = _G()
    cin = ch(32)
    y = g.conv("input", 3, cin, 3, stride=2, act="relu6")
    table = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1)]
    for t, c, n, s in table:
        cout = ch(c)
        for i in range(n):
            stride = s if i == 0 else 1
            hidden = cin * t
            h = g.conv(y, cin, hidden, 1, act="relu6") if t != 1 else y
            h = g.conv(h, hidden, hidden, 3, stride=stride, group=hidden, act="relu6")
            h = g.conv(h, hidden, cout, 1, act=None)
            y = g.node("Add", [y, h]) if stride == 1 and cin == cout else h
            cin = cout
    last = max(1280, ch(1280)) if width > 1.0 else 1280
    y = g.conv(y, cin, last, 1, act="relu6")
    y = g.node("GlobalAveragePool", [y])
    y = g.node("Flatten", [y], axis=1)
    w = g.rng.normal(0, np.sqrt(1.0 / last), (last, classes))
    y = g.node("Gemm", [y, g.init(w, "fc_w"), g.init(np.zeros(classes), "fc_b")], "logits")
    return g.model("input", [1, 3, size, size], y, [1, classes], "mobilenet_v2",
                   mobilenet_v2.__doc__)


def conv_softmax(size: int = 8, classes: int = 5) -> onnx.ModelProto:
    """`input` [1, 3, size, size] -> `probs` [1, classes] (Softmax on the host)."""
    g = _G(1)
    y = g.conv("input", 3, 8, 3)
    y = g.node("GlobalAveragePool", [y])
    y = g.node("Flatten", [y], axis=1)
    y = g.node("Gemm", [y, g.init(g.rng.normal(0, 0.5, (8, classes)), "fc_w"),
                        g.init(np.zeros(classes), "fc_b")])
    y = g.node("Softmax", [y], "probs", axis=-1)
    return g.model("input", [1, 3, size, size], y, [1, classes], "conv_softmax",
                   conv_softmax.__doc__)


def big_activation(hw: int = 1024, channels: int = 16) -> onnx.ModelProto:
    """`input` [1, channels, hw, hw] -> one 3x3 Conv + Relu of the same size."""
    g = _G(2)
    y = g.conv("input", channels, channels, 3)
    return g.model("input", [1, channels, hw, hw], y, [1, channels, hw, hw], "big_activation",
                   big_activation.__doc__)
