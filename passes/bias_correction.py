"""Weight-quantization bias correction (what NNCF calls fast bias correction).

Quantizing a layer's weights W -> W_q (the dequantized values) moves the expected value of
each output channel. With mu the mean of the layer's float input over the calibration set
(`passes.calibration.collect(..., means=...)`), the shift that restores E[y_q] = E[y_fp] is

- linear, y = x @ W (MatMul, W [K, N]; Gemm y = alpha * A @ B + beta * C, B [K, N] or [N, K]
  with transB): mu_k is the mean of input feature k over every leading dimension and

      shift[n] = alpha * sum_k mu_k (W - W_q)[k, n]          (alpha = 1 for MatMul)

  which is exact for the expectation: E[x @ W] = E[x] @ W;
- Conv, W [O, C/g, k...]: mu_c is the mean of input channel c over the batch and all spatial
  positions and

      shift[o] = sum_{c in group(o), k...} (W - W_q)[o, c, k...] * mu_c

  exact away from the borders; where zero padding replaces x by 0 the true shift is smaller
  (the padded taps contribute 0, not mu_c). Padding borders are ignored.

The shift goes into the layer's bias, b' = b + shift: Conv's bias input (added when absent),
Gemm's C (added when absent; C' = C + shift / beta), and for a MatMul the constant of the one
Add its output feeds when that constant broadcasts along the last axis only (shape [N], [1, N],
[1] ...). A MatMul with no such Add is not corrected (an extra Add would split the
DQ -> MatMul -> Q pattern backends fuse into integer kernels); the record says why.

Only the weight error is corrected: the activation quantization error (rounding of x, and
clipping of its calibrated range) also has a non-zero mean in general and is left as it is.
Biases are never modified in place (they may be shared); the corrected one is a new constant.
It zeroes each layer's own mean error; the network output usually gains, but not always (full
INT8, held-out digits: CNN +1.5 to +2.3 dB output SQNR, ViT within +-0.3 dB).
"""

from __future__ import annotations

import numpy as np

from compiler.ir import Graph, Node, Value, constant_value

__all__ = ["input_mean_axis", "linear_shift", "weight_shift", "fold_shift"]


def input_mean_axis(node: Node) -> int | None:
    """Axis of input 0 whose per-channel mean the correction needs (None: not supported)."""
    if node.op_type == "Conv":
        return 1
    if node.op_type == "MatMul":
        return -1
    if node.op_type == "Gemm":
        return 0 if node.attr("transA", 0) else 1
    return None


def linear_shift(w: np.ndarray, w_q: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    """mu @ (W - W_q) for a [K, N] weight; None if the mean is not of length K."""
    mu = np.asarray(mean, np.float64).ravel()
    if np.ndim(w) != 2 or mu.size != np.shape(w)[0]:
        return None
    return mu @ (np.asarray(w, np.float64) - np.asarray(w_q, np.float64))


def weight_shift(node: Node, w: np.ndarray, w_q: np.ndarray, mean: np.ndarray
                 ) -> np.ndarray | None:
    """E[y_fp] - E[y_q] per output channel for float weights `w` and dequantized `w_q` (same
    layout as the node's weight input), given the per-channel input mean; None where the layer
    does not fit the formulas above (e.g. a batched MatMul weight, a mean of the wrong size)."""
    mu = np.asarray(mean, np.float64).ravel()
    if node.op_type == "Conv":
        dw = np.asarray(w, np.float64) - np.asarray(w_q, np.float64)
        o, cg = dw.shape[0], dw.shape[1]
        groups = int(node.attr("group", 1))
        if mu.size != cg * groups or o % groups:
            return None
        per_in = dw.reshape(o, cg, -1).sum(axis=2)  # [O, C/g]: spatial taps summed
        mu_of_out = mu.reshape(groups, cg)[np.arange(o) // (o // groups)]  # [O, C/g]
        return np.einsum("oc,oc->o", per_in, mu_of_out)
    if node.op_type == "Gemm" and node.attr("transB", 0) and np.ndim(w) == 2:
        w, w_q = np.transpose(w), np.transpose(w_q)
    shift = linear_shift(w, w_q, mu)
    if shift is not None and node.op_type == "Gemm":
        shift = shift * float(node.attr("alpha", 1.0))
    return shift


def _replace_const(graph: Graph, node: Node, i: int, array: np.ndarray, hint: str) -> None:
    """Point input `i` of `node` at a new constant; drop the old one if nothing reads it."""
    old = node.inputs[i] if i < len(node.inputs) else None
    new = graph.make_constant(np.asarray(array, np.float32), hint)
    while len(node.inputs) <= i:
        node.append_input(None)
    node.set_input(i, new)
    if old is None or old.uses or old.is_graph_output():
        return
    if old.const is not None:
        graph.drop_if_unused(old)
    elif old.producer is not None and old.producer.op_type == "Constant" and \
            old.producer.graph is graph:
        graph.remove(old.producer)


def bias_add(node: Node, n_out: int) -> tuple[Node, int, np.ndarray] | tuple[None, str, None]:
    """The Add right after a MatMul whose constant input is a per-column bias (one value, or one
    per each of the `n_out` columns): (add, index of the bias input, bias), or (None, why,
    None). Bias correction folds a shift into it; `passes.quantize.int32_bias_add` re-types
    it."""
    y = node.outputs[0]
    if y.is_graph_output() or len(y.uses) != 1:
        return None, "the MatMul output has no single Add reader to hold a bias", None
    add, k = y.uses[0]
    if add.op_type != "Add" or add.domain or len(add.inputs) != 2:
        return None, f"the MatMul output feeds {add.op_type}, not a bias Add", None
    other: Value | None = add.inputs[1 - k]
    c = constant_value(other)
    if c is None or c.dtype != np.float32:
        return None, "the Add after the MatMul has no float constant input", None
    if c.ndim and (c.size != c.shape[-1] or c.shape[-1] not in (1, n_out)):
        return None, f"the Add's constant {tuple(c.shape)} is not a per-column bias", None
    return add, 1 - k, c


def fold_shift(graph: Graph, node: Node, shift: np.ndarray) -> dict:
    """Add `shift` (per output channel) to the bias of `node` (see the module docstring).
    Returns {"corrected": bool, "into": where or "why": reason, "max_abs_shift": float}."""
    shift = np.asarray(shift, np.float64)
    rec: dict = {"corrected": False, "max_abs_shift": float(np.max(np.abs(shift), initial=0.0))}
    if not np.all(np.isfinite(shift)):
        rec["why"] = "the shift is not finite (calibration mean overflowed)"
        return rec
    op = node.op_type
    if op == "Conv":
        b = constant_value(node.inputs[2]) if len(node.inputs) > 2 and \
            node.inputs[2] is not None else np.zeros(shift.size, np.float32)
        if b is None or b.shape != shift.shape:
            rec["why"] = "the Conv bias is not a constant of one value per output channel"
            return rec
        rec["into"] = "bias" if len(node.inputs) > 2 and node.inputs[2] is not None \
            else "new bias"
        _replace_const(graph, node, 2, b + shift, (node.name or "conv") + "/bias_corrected")
    elif op == "Gemm":
        beta = float(node.attr("beta", 1.0))
        has_c = len(node.inputs) > 2 and node.inputs[2] is not None
        c = constant_value(node.inputs[2]) if has_c else np.zeros(shift.size, np.float32)
        if c is None:
            rec["why"] = "Gemm's C is computed at run time"
            return rec
        if beta == 0.0:
            rec["why"] = "Gemm has beta = 0, so C cannot hold a bias"
            return rec
        try:  # C broadcasts to [M, N]; so does C + shift unless C's last axis is not N
            new = c + shift / beta
        except ValueError:
            rec["why"] = f"Gemm's C {tuple(c.shape)} does not broadcast over the columns"
            return rec
        rec["into"] = "C" if has_c else "new C"
        _replace_const(graph, node, 2, new, (node.name or "gemm") + "/C_corrected")
    elif op == "MatMul":
        add, k, c = bias_add(node, shift.size)
        if add is None:
            rec["why"] = k
            return rec
        rec["into"] = "Add constant"
        _replace_const(graph, add, k, c + shift, (add.name or "add") + "/bias_corrected")
    else:
        rec["why"] = f"no bias correction for {op}"
        return rec
    rec["corrected"] = True
    return rec
