"""Calibration statistics of the tensors pruning reads: one ONNX Runtime run over the samples.

Each consumer layer's input x is added as a graph output and reduced batch by batch, so memory
holds statistics, never activations: per channel (along the layer's input axis) the sums of x
and x^2 (importance: E[x^2] for Wanda-style scores, Var(x) for FLAP's WIFV), and for layers
that recovery reconstructs the Gram matrix G = sum x~ x~^T of the rows x~ = [x, 1] the layer
multiplies its weight with (a Conv's rows are its kh*kw*C/g im2col patches).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from compiler.errors import ConstraintError
from compiler.ir import Graph, Node, constant_value
from compiler.onnx_io import export_onnx

__all__ = ["LayerStats", "collect_layer_stats", "input_axis", "layer_rows"]


def input_axis(node: Node) -> int:
    """The axis of input 0 that a weight layer contracts (its channels)."""
    if node.op_type == "Conv":
        return 1
    if node.op_type == "Gemm":
        return 0 if node.attr("transA", 0) else 1
    return -1


def layer_rows(node: Node, x: np.ndarray) -> np.ndarray:
    """The rows [n, K] that `node` multiplies its [K, N] weight matrix with (im2col for Conv,
    in the weight's (C/g, kh, kw) order, group 1 only)."""
    if node.op_type == "Gemm":
        return x.T if node.attr("transA", 0) else x
    if node.op_type != "Conv":
        return x.reshape(-1, x.shape[-1])
    w = constant_value(node.inputs[1])
    kshape = w.shape[2:]
    pads = node.attr("pads") or [0] * (2 * len(kshape))
    strides = node.attr("strides") or [1] * len(kshape)
    dil = node.attr("dilations") or [1] * len(kshape)
    if any(d != 1 for d in dil) or len(kshape) != 2:
        raise ValueError("only 2-D, undilated convolutions are unfolded")
    nd = len(kshape)
    xp = np.pad(x, [(0, 0), (0, 0)] + [(pads[i], pads[i + nd]) for i in range(nd)])
    win = np.lib.stride_tricks.sliding_window_view(xp, kshape, axis=(2, 3))
    win = win[:, :, ::strides[0], ::strides[1]]  # [N, C, H', W', kh, kw]
    return win.transpose(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1] * int(np.prod(kshape)))


@dataclass
class LayerStats:
    """Per-channel sums along the input axis, and the Gram of [rows, 1] when requested."""

    count: int = 0
    sum: np.ndarray | None = None
    sumsq: np.ndarray | None = None
    gram: np.ndarray | None = None
    rows: int = 0

    def mean(self) -> np.ndarray:
        return self.sum / max(self.count, 1)

    def meansq(self) -> np.ndarray:
        return self.sumsq / max(self.count, 1)

    def var(self) -> np.ndarray:
        return np.maximum(self.meansq() - self.mean() ** 2, 0.0)


@dataclass
class _Spec:
    node: Node
    gram: bool
    stats: LayerStats = field(default_factory=LayerStats)


def collect_layer_stats(graph: Graph, layers: Iterable[Node], calibration: Iterable[Mapping],
                        *, gram: Iterable[Node] = (), max_samples: int = 64
                        ) -> dict[int, LayerStats]:
    """Statistics of each layer's input x (keyed by id(node)) over the calibration samples."""
    from passes.calibration import make_session, run_model

    gram_ids = {id(n) for n in gram}
    specs = {id(n): _Spec(n, id(n) in gram_ids) for n in layers}
    model = export_onnx(graph)
    have = {o.name for o in model.graph.output}
    for s in specs.values():
        name = s.node.inputs[0].name
        if name not in have:
            model.graph.output.append(onnx.helper.make_tensor_value_info(
                name, s.node.inputs[0].dtype or onnx.TensorProto.FLOAT, None))
            have.add(name)
    sess = make_session(model)
    n = 0
    for feeds in itertools.islice(iter(calibration), max_samples):
        got = run_model(sess, {k: np.asarray(v) for k, v in feeds.items()})
        for s in specs.values():
            _update(s, np.asarray(got[s.node.inputs[0].name], np.float64))
        n += 1
    if n == 0:
        raise ConstraintError("the calibration data holds no samples")
    return {k: s.stats for k, s in specs.items()}


def _update(spec: _Spec, x: np.ndarray) -> None:
    st = spec.stats
    ax = input_axis(spec.node) % x.ndim
    moved = np.moveaxis(x, ax, -1).reshape(-1, x.shape[ax])
    if st.sum is None:
        st.sum = np.zeros(moved.shape[1])
        st.sumsq = np.zeros(moved.shape[1])
    st.sum += moved.sum(0)
    st.sumsq += (moved * moved).sum(0)
    st.count += moved.shape[0]
    if spec.gram:
        rows = layer_rows(spec.node, x.astype(np.float32))
        rows = np.concatenate([rows, np.ones((rows.shape[0], 1), np.float32)], axis=1)
        g = (rows.T @ rows).astype(np.float64)  # float32 products: the batch sums stay small
        st.gram = g if st.gram is None else st.gram + g
        st.rows += rows.shape[0]
