"""Recovery without retraining: re-fit each layer that lost input channels, in closed form.

Write a reading layer as y = [x, 1] @ T with T = [W; b] (W: [K, N], a Conv's W unfolded to
[C*kh*kw, O]; alpha of a Gemm folded in), and let G = sum over calibration rows of
[x, 1]^T [x, 1] (passes.pruning.activations), collected on the unpruned graph; n rows, and
mu = G[K, :K] / n the mean of each input feature. Pruning zeroes the removed rows R of W. For
each candidate T' (rows R zero) the output error over the calibration set is exactly

    E(T') = tr((T - T')^T G (T - T')) / n,

reported relative to the output energy tr(T^T G T) / n. Candidates:

- `none`: T' = T with rows R zeroed;
- `bias` (bias compensation, as FLAP): the removed features' mean contribution moves into the
  bias, b' = b + W[R]^T mu[R]; this zeroes the error's mean;
- `lstsq` (least squares, ridge): the kept rows S (and the bias row) are re-fitted,
  T'[S] = (G_SS + lambda I)^-1 G_S: T, the normal equations of min ||[x,1]_S T' - [x,1] T||^2;
  lambda = `ridge` x mean(diag G_SS) keeps it well-posed when features are collinear.

`auto` keeps, per layer, the candidate with the smallest E (ridge can lose to bias compensation
when the calibration set is small against K). New weights and biases are written after the
graph is rewritten; biases go where passes.bias_correction.fold_shift puts weight-quantization
shifts (Conv bias, Gemm C, the Add after a MatMul; a MatMul without one keeps no bias, and then
only `lstsq` of the weights applies). Upstream layers are pruned too, so a layer's real input
differs from the unpruned one it was fitted on; the reported error is the layer's own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from compiler.ir import Node, constant_value
from passes.bias_correction import bias_add, fold_shift
from passes.pruning.activations import collect_layer_stats
from passes.pruning.groups import Analysis

__all__ = ["candidates", "prepare"]


def _matrix(node: Node) -> tuple[np.ndarray, np.ndarray | None] | None:
    """(W [K, N], b [N] or None if the layer has no bias slot) in float64, or None."""
    w = constant_value(node.inputs[1])
    if w is None:
        return None
    w = np.asarray(w, np.float64)
    if node.op_type == "Conv":
        if int(node.attr("group", 1)) != 1 or w.ndim != 4 or any(
                d != 1 for d in (node.attr("dilations") or [1, 1])):
            return None
        n = w.shape[0]
        b = constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] \
            is not None else np.zeros(n)
        return w.reshape(n, -1).T, np.asarray(b, np.float64)
    if node.op_type == "Gemm":
        if w.ndim != 2 or node.attr("transA", 0):
            return None
        w = (w.T if node.attr("transB", 0) else w) * float(node.attr("alpha", 1.0))
        n = w.shape[1]
        c = node.inputs[2] if len(node.inputs) > 2 else None
        if c is None:
            return w, np.zeros(n)
        cc = constant_value(c)
        if cc is None or float(node.attr("beta", 1.0)) == 0.0 or cc.size not in (1, n):
            return w, None
        return w, np.broadcast_to(np.asarray(cc, np.float64).reshape(-1) *
                                  float(node.attr("beta", 1.0)), (n,)).copy()
    if node.op_type == "MatMul" and w.ndim == 2:
        add, k, c = bias_add(node, w.shape[1])
        if add is None:
            return w, None
        return w, np.broadcast_to(np.asarray(c, np.float64).reshape(-1), (w.shape[1],)).copy()
    return None


def candidates(theta: np.ndarray, gram: np.ndarray, n: int, keep: np.ndarray, has_bias: bool,
               ridge: float = 1e-3) -> dict[str, tuple[np.ndarray, float]]:
    """{name: (T', relative error)} for T = [W; b] ([K+1, N]) with input features `keep`."""
    k = theta.shape[0] - 1
    removed = ~keep
    energy = max(float(np.einsum("in,ij,jn->", theta, gram, theta)) / n, 1e-30)

    def err(t: np.ndarray) -> float:
        d = theta - t
        return max(float(np.einsum("in,ij,jn->", d, gram, d)) / n, 0.0) / energy

    out: dict[str, tuple[np.ndarray, float]] = {}
    base = theta.copy()
    base[:k][removed] = 0.0
    out["none"] = (base, err(base))
    if has_bias:
        mu = gram[k, :k] / n
        t = base.copy()
        t[k] = theta[k] + mu[removed] @ theta[:k][removed]
        out["bias"] = (t, err(t))
    s = np.concatenate([keep, [has_bias]])
    gss = gram[np.ix_(s, s)]
    lam = ridge * float(np.mean(np.diag(gss))) if gss.size else 0.0
    sol = np.linalg.solve(gss + lam * np.eye(gss.shape[0]), gram[s] @ theta)
    t = np.zeros_like(theta)
    t[s] = sol
    if not has_bias:
        t[k] = theta[k]
    out["lstsq"] = (t, err(t))
    return out


def _write(analysis: Analysis, node: Node, theta: np.ndarray, old_b: np.ndarray | None,
           keep_in: np.ndarray, keep_out: np.ndarray) -> None:
    graph = analysis.graph
    w = theta[:-1]
    if node.op_type == "Conv":
        wc = constant_value(node.inputs[1])
        per = int(np.prod(wc.shape[2:])) if wc.ndim > 2 else 1
        rows = np.repeat(keep_in, per)
        w = w[rows][:, keep_out]
        new = w.T.reshape(int(keep_out.sum()), int(keep_in.sum()), *wc.shape[2:])
    else:
        w = w[keep_in][:, keep_out]
        if node.op_type == "Gemm":
            w = w / float(node.attr("alpha", 1.0))
            new = w.T if node.attr("transB", 0) else w
        else:
            new = w
    c = graph.make_constant(np.ascontiguousarray(new, np.float32),
                            (node.name or node.op_type) + "/recovered")
    old = node.inputs[1]
    node.set_input(1, c)
    graph.drop_if_unused(old)
    if old_b is not None:
        shift = (theta[-1] - old_b)[keep_out]
        if np.any(shift != 0):
            fold_shift(graph, node, shift)


def prepare(analysis: Analysis, removed: set[int], calibration: Iterable[Mapping],
            method: str = "auto", ridge: float = 1e-3) -> Callable[[], list[dict[str, Any]]]:
    """Collect what recovery needs from the unpruned graph; the returned function, called after
    `apply_plan`, re-fits the layers and returns one record per layer."""
    layers = []
    for e in analysis.trace.edits:
        if e.kind != "slice" or e.role != "in":
            continue
        keep = analysis.keep_mask(e.label, removed)
        if keep.all() or _matrix(e.node) is None:
            continue
        out_edit = next((o for o in analysis.trace.edits if o.node is e.node and o.role == "out"),
                        None)
        keep_out = analysis.keep_mask(out_edit.label, removed) if out_edit is not None else None
        layers.append((e.node, keep, keep_out))
    stats = collect_layer_stats(analysis.graph, [n for n, _, _ in layers], calibration,
                                gram=[n for n, _, _ in layers]) if layers else {}
    fitted = []
    for node, keep, keep_out in layers:
        w, b = _matrix(node)
        st = stats[id(node)]
        has_bias = b is not None
        theta = np.vstack([w, (b if has_bias else np.zeros(w.shape[1]))[None]])
        kh = w.shape[0] // keep.size
        feat_keep = np.repeat(keep, kh)
        cands = candidates(theta, st.gram, st.rows, feat_keep, has_bias, ridge)
        name = min(cands, key=lambda c: cands[c][1]) if method == "auto" else \
            (method if method in cands else "none")
        keep_out = keep_out if keep_out is not None else np.ones(w.shape[1], bool)
        fitted.append((node, name, cands, b, keep, keep_out))

    def recover() -> list[dict[str, Any]]:
        records = []
        for node, name, cands, b, keep, keep_out in fitted:
            theta = cands[name][0]
            if name != "none":
                _write(analysis, node, theta, b, keep, keep_out)
            records.append({"layer": node.name or node.op_type, "recovery": name,
                            "inputs_removed": int((~keep).sum()), "inputs": int(keep.size),
                            "error": {k: round(v[1], 6) for k, v in cands.items()}})
        return records

    return recover
