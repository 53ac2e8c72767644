"""Bit-exact numpy reference of a fixed-point dataflow chain (compiler/fpga_layers.py).

It computes what hls4ml's `nnet_utils` compute, in integer codes (compiler/fixedpoint.py):

- input: the float input converted to the input type (its rounding and overflow modes);
- dense / conv2d / dwconv2d: every product x*w is exact, then cast to `accum` (hls4ml stores
  each product in an `accum_t` array), the bias is cast to `accum`, the sum wraps in `accum`,
  and the sum is cast to `result` (nnet_dense_latency.h / nnet_dense_resource.h /
  nnet_depthwise_product.h). Convolutions pad with zeros and apply the same dense kernel per
  output pixel (im2col);
- relu: max(x, 0) cast to `result`; maxpool2d: max over the window, cast to `result`;
- gap2d: the sum of the plane in `accum`, divided by H*W in `accum` (ap_fixed division by an
  integer keeps the dividend's fractional bits and truncates towards zero), cast to `result`
  (nnet_pooling_stream.h global_pooling2d_cl);
- flatten: a reshape.

`simulate(..., exact=False)` runs the same chain in float64 without any rounding: the float
reference that checks the chain was read out of the IR correctly.
"""

from __future__ import annotations

import numpy as np

from compiler.fixedpoint import FixedType, requantize
from compiler.fpga_layers import FpgaLayer, from_channels_last, to_channels_last

__all__ = ["input_codes", "run_chain", "simulate", "to_output"]


def _patches(x: np.ndarray, layer: FpgaLayer) -> np.ndarray:
    """[B, H, W, C] -> [B, OH, OW, kh, kw, C] windows (zero padded)."""
    top, bottom, left, right = layer.pads
    x = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    kh, kw = layer.kernel
    sh, sw = layer.stride
    oh, ow = layer.out_shape[0], layer.out_shape[1]
    b, c = x.shape[0], x.shape[3]
    out = np.empty((b, oh, ow, kh, kw, c), x.dtype)
    for i in range(kh):
        for j in range(kw):
            out[:, :, :, i, j, :] = x[:, i:i + sh * oh:sh, j:j + sw * ow:sw, :]
    return out


def _mac(x: np.ndarray, w: np.ndarray, depthwise: bool) -> np.ndarray:
    """Sum of products over the contraction axis of x against w ([K, N], or [K, C] depthwise).
    Integer codes go through float64 BLAS when every partial sum stays below 2^53 (integers
    are exact in float64 there), else through int64."""
    if x.dtype.kind == "i":
        k = w.shape[0]
        bound = float(np.abs(x).max(initial=0)) * float(np.abs(w).max(initial=0)) * k
        if bound < 2.0 ** 52:
            return _mac(x.astype(np.float64), w.astype(np.float64), depthwise).astype(np.int64)
    if depthwise:  # x: [..., K, C], w: [K, C]
        return np.einsum("...kc,kc->...c", x, w)
    return x @ w


def _weighted(layer: FpgaLayer, x: np.ndarray, frac: int, exact: bool
              ) -> tuple[np.ndarray, int]:
    dw = layer.kind == "dwconv2d"
    if layer.kind == "dense":
        cols = x
        w = layer.weight
    else:
        p = _patches(x, layer)
        if dw:  # [B, OH, OW, kh*kw, C]
            cols = p.reshape(*p.shape[:3], -1, p.shape[-1])
            w = layer.weight.reshape(-1, layer.weight.shape[2])
        else:
            cols = p.reshape(*p.shape[:3], -1)
            w = layer.weight.reshape(-1, layer.weight.shape[3])
    if not exact:
        return _mac(cols.astype(np.float64), w.astype(np.float64), dw) + layer.bias, 0
    wt, bt, acc, res = (layer.types[k] for k in ("weight", "bias", "accum", "result"))
    wc, bc = layer.codes("weight", wt).reshape(w.shape), layer.codes("bias", bt)
    fp = frac + wt.frac
    if acc.frac >= fp:  # every product fits the accumulator's grid: one exact sum
        s = requantize(_mac(cols, wc, dw), fp, acc)
    else:  # each product is truncated/rounded into accum before the sum
        if dw:
            prods = cols * wc
            s = requantize(prods, fp, acc).sum(axis=-2)
        else:
            prods = cols[..., :, None] * wc
            s = requantize(prods, fp, acc).sum(axis=-2)
    s = requantize(s + requantize(bc, bt.frac, acc), acc.frac, acc)
    return requantize(s, acc.frac, res), res.frac


def _step(layer: FpgaLayer, x: np.ndarray, frac: int, exact: bool) -> tuple[np.ndarray, int]:
    kind = layer.kind
    if kind in ("dense", "conv2d", "dwconv2d"):
        return _weighted(layer, x, frac, exact)
    if kind == "flatten":
        return x.reshape(x.shape[0], -1), frac
    if kind == "relu":
        y = np.maximum(x, 0)
    elif kind == "maxpool2d":
        y = _patches(x, layer).max(axis=(3, 4))
    elif kind == "gap2d":
        n = x.shape[1] * x.shape[2]
        if not exact:
            return x.mean(axis=(1, 2), keepdims=True), 0
        acc = layer.types["accum"]
        s = requantize(requantize(x, frac, acc).sum(axis=(1, 2), keepdims=True), acc.frac, acc)
        q = np.sign(s) * (np.abs(s) // n)  # C division: towards zero
        return requantize(q, acc.frac, layer.types["result"]), layer.types["result"].frac
    else:
        raise ValueError(f"unknown layer kind {kind!r}")
    if not exact:
        return y, 0
    res = layer.types["result"]
    return requantize(y, frac, res), res.frac


def input_codes(in_type: FixedType, x: np.ndarray) -> tuple[np.ndarray, int]:
    """(codes, fractional bits) of input `x` (ONNX layout) converted to `in_type`."""
    return in_type.codes(to_channels_last(np.asarray(x))), in_type.frac


def run_chain(layers: list[FpgaLayer], cur: np.ndarray, frac: int, start: int = 0,
              exact: bool = True, keep: bool = False) -> list[tuple[np.ndarray, int]]:
    """Run layers[start:] from `cur` (codes with `frac` fractional bits, or floats when not
    `exact`); the (codes, frac) after each layer when `keep`, else only after the last."""
    outs = []
    for layer in layers[start:]:
        cur, frac = _step(layer, cur, frac, exact)
        if keep:
            outs.append((cur, frac))
    return outs if keep else [(cur, frac)]


def to_output(layers: list[FpgaLayer], codes: np.ndarray, frac: int) -> np.ndarray:
    """The chain's final codes as real values in ONNX layout (float32, exact)."""
    y = np.asarray(codes) * 2.0 ** -frac
    return from_channels_last(y, layers[-1].out_shape).astype(np.float32)


def simulate(layers: list[FpgaLayer], in_type: FixedType | None, x: np.ndarray,
             exact: bool = True) -> np.ndarray:
    """The chain's output for `x` in ONNX layout (float32 values, exactly representable)."""
    if exact:
        if in_type is None:
            raise ValueError("the exact reference needs the input's fixed-point type")
        cur, frac = input_codes(in_type, x)
    else:
        cur, frac = to_channels_last(np.asarray(x)).astype(np.float64), 0
    (y, frac), = run_chain(layers, cur, frac, exact=exact)
    return to_output(layers, y, frac)
