"""edgec's own integer reference for the TOSA programs `targets.tosa_lower` builds (numpy).

It executes the same integer math the TOSA 1.0 specification defines, so the TOSA reference
model (`tosa_reference_model`) must agree with it bit for bit; a difference is a lowering or
serialization bug, not rounding noise.

Rescale (TOSA 1.0 RESCALE, scale32, DOUBLE_ROUND): a real scale r > 0 is m * 2^-s with a
31-bit multiplier m in [2^30, 2^31) and 2 <= s <= 62 (`quantize_multiplier`);

    apply_scale_32(v, m, s) = (v * m + round) >> s,   round = 2^(s-1) (+-2^30 when s > 31)
    RESCALE(x) = clamp(apply_scale_32(x - in_zp, m, s) + out_zp, out range)

in 64-bit integers (|v| < 2^31, m < 2^31, so the product fits). Convolutions accumulate
(x - x_zp) * (w - w_zp) + bias in int32 (exact here through float64 matmuls: every partial sum
stays below 2^53). AVG_POOL2D divides the zero-point-corrected int32 sum by the number of
elements the kernel covers (padding excluded) with the same rounding: the reciprocal is turned
into a multiplier/shift as the specification's pseudo-code does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from targets.tosa_lower import IntProgram

__all__ = ["apply_scale_32", "quantize_multiplier", "rescale", "run_program"]

_RANGES = {"int8": (-128, 127), "int16": (-32768, 32767), "int32": (-2**31, 2**31 - 1)}
_NP = {"int8": np.int8, "int16": np.int16, "int32": np.int32}


def quantize_multiplier(scale: float) -> tuple[int, int]:
    """(multiplier, shift) with scale ~= multiplier * 2^-shift, multiplier in [2^30, 2^31),
    shift in [2, 62]; tiny scales lose multiplier bits instead of exceeding shift 62."""
    if not scale > 0 or not math.isfinite(scale):
        raise ValueError(f"rescale factor {scale!r} is not a positive finite number")
    mant, exp = math.frexp(scale)  # scale = mant * 2^exp, mant in [0.5, 1)
    mult = int(round(mant * (1 << 31)))
    if mult == 1 << 31:
        mult //= 2
        exp += 1
    shift = 31 - exp
    if shift > 62:
        mult >>= shift - 62
        shift = 62
    if shift < 2:
        raise ValueError(f"rescale factor {scale:g} is too large for a 32-bit rescale")
    return mult, shift


def apply_scale_32(v: np.ndarray, mult, shift, double_round: bool = True) -> np.ndarray:
    """TOSA apply_scale_32, elementwise (mult/shift broadcast)."""
    v = np.asarray(v, np.int64)
    mult = np.asarray(mult, np.int64)
    shift = np.asarray(shift, np.int64)
    rnd = np.left_shift(np.int64(1), shift - 1)
    if double_round:
        rnd = np.where(shift > 31, np.where(v >= 0, rnd + (1 << 30), rnd - (1 << 30)), rnd)
    return np.right_shift(v * mult + rnd, shift)


def rescale(x: np.ndarray, mult, shift, in_zp: int, out_zp: int, out: str) -> np.ndarray:
    lo, hi = _RANGES[out]
    r = apply_scale_32(np.asarray(x, np.int64) - in_zp, mult, shift) + out_zp
    return np.clip(r, lo, hi).astype(_NP[out])


def _patches(x: np.ndarray, kh: int, kw: int, stride, dil, pad, fill: int) -> np.ndarray:
    """[N, OH, OW, kh, kw, C] windows of NHWC `x` padded with `fill` (pad: t, b, l, r)."""
    t, b, lft, r = pad
    xp = np.pad(x, ((0, 0), (t, b), (lft, r), (0, 0)), constant_values=fill)
    n, h, w, c = xp.shape
    oh = (h - (kh - 1) * dil[0] - 1) // stride[0] + 1
    ow = (w - (kw - 1) * dil[1] - 1) // stride[1] + 1
    out = np.empty((n, oh, ow, kh, kw, c), xp.dtype)
    for i in range(kh):
        for j in range(kw):
            y0, x0 = i * dil[0], j * dil[1]
            out[:, :, :, i, j, :] = xp[:, y0:y0 + stride[0] * (oh - 1) + 1:stride[0],
                                       x0:x0 + stride[1] * (ow - 1) + 1:stride[1]]
    return out


def _conv(x, w, b, xzp, a, depthwise: bool) -> np.ndarray:
    xs = x.astype(np.float64) - xzp
    if depthwise:  # w [kh, kw, C, M]
        kh, kw, c, m = w.shape
        p = _patches(xs, kh, kw, a["stride"], a["dilation"], a["pad"], 0)
        acc = np.einsum("nhwijc,ijcm->nhwcm", p, w.astype(np.float64))
        acc = acc.reshape(*acc.shape[:3], c * m)
    else:  # w [OC, kh, kw, C]
        oc, kh, kw, c = w.shape
        p = _patches(xs, kh, kw, a["stride"], a["dilation"], a["pad"], 0)
        acc = p.reshape(*p.shape[:3], -1) @ w.reshape(oc, -1).T.astype(np.float64)
    return (acc + b).astype(np.int64)


def _avg_pool(x, a, in_zp: int, out_zp: int) -> np.ndarray:
    kh, kw = a["kernel"]
    xs = x.astype(np.int64) - in_zp
    p = _patches(xs, kh, kw, a["stride"], (1, 1), a["pad"], 0)
    ones = _patches(np.ones(x.shape[:3] + (1,), np.int64), kh, kw, a["stride"], (1, 1),
                    a["pad"], 0)
    acc = p.sum(axis=(3, 4))
    count = ones.sum(axis=(3, 4))
    out = np.empty_like(acc)
    for cnt in np.unique(count):
        mult, shift = _reciprocal(int(cnt))
        sel = np.broadcast_to(count == cnt, acc.shape)
        out[sel] = apply_scale_32(acc[sel], mult, shift, double_round=False)
    return np.clip(out + out_zp, -128, 127).astype(np.int8)


def _reciprocal(count: int) -> tuple[int, int]:
    """The specification's reciprocal_scale(count): k = 32 - clz(count - 1), multiplier
    ((2^30 + 1) << k) // count, shift 30 + k (AVG_POOL2D, single rounding)."""
    k = int(count - 1).bit_length()
    return (((1 << 30) + 1) << k) // count, 30 + k


def run_program(prog: IntProgram, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Execute `prog` on integer inputs (by TOSA input name); returns outputs by name."""
    env: dict[str, np.ndarray] = {k: np.asarray(v) for k, v in feeds.items()}
    for name, t in prog.tensors.items():
        if t.data is not None:
            env[name] = t.data
    for op in prog.ops:
        a, ins = op.attrs, [env[i] for i in op.inputs]
        k = op.op
        if k in ("CONV2D", "DEPTHWISE_CONV2D"):
            r = _conv(ins[0], ins[1], ins[2], int(ins[3].ravel()[0]), a, k != "CONV2D")
            r = r.astype(np.int32)
        elif k == "RESCALE":
            r = rescale(ins[0], ins[1], ins[2], int(ins[3].ravel()[0]), int(ins[4].ravel()[0]),
                        a["out"])
        elif k == "CLAMP":
            r = np.clip(ins[0], a["min"], a["max"]).astype(ins[0].dtype)
        elif k in ("ADD", "SUB"):
            x, y = ins[0].astype(np.int64), ins[1].astype(np.int64)
            r = (x + y if k == "ADD" else x - y).astype(np.int32)
        elif k == "MAX_POOL2D":
            p = _patches(ins[0], *a["kernel"], a["stride"], (1, 1), a["pad"], -128)
            r = p.max(axis=(3, 4)).astype(np.int8)
        elif k == "AVG_POOL2D":
            r = _avg_pool(ins[0], a, int(ins[1].ravel()[0]), int(ins[2].ravel()[0]))
        elif k == "RESHAPE":
            r = ins[0].reshape(a["shape"])
        elif k == "TRANSPOSE":
            r = np.ascontiguousarray(np.transpose(ins[0], a["perms"]))
        elif k == "CONCAT":
            r = np.concatenate(ins, axis=a["axis"])
        elif k == "TABLE":
            r = ins[1][ins[0].astype(np.int64) + 128].astype(np.int8)
        elif k == "MATMUL":
            x = ins[0].astype(np.float64) - int(ins[2].ravel()[0])
            y = ins[1].astype(np.float64) - int(ins[3].ravel()[0])
            r = (x @ y).astype(np.int64).astype(np.int32)
        else:
            raise NotImplementedError(f"no reference for TOSA op {k}")
        env[op.outputs[0]] = r
    return {name: env[name] for name in prog.outputs}
