"""Arbitrary-precision fixed point as Xilinx `ap_fixed` computes it, in exact integer numpy.

A value of type `ap_fixed<W, I, Q, O>` (`ap_ufixed` when unsigned) is an integer code `c` of W
bits with F = W - I fractional bits: value = c * 2^-F. Converting a wider value (real, or a
code with F' > F fractional bits) rounds by the quantization mode Q:

- TRN: floor(v * 2^F)                       (ap_fixed's default; drops bits, biased down)
- RND: floor(v * 2^F + 1/2)                 (round half towards +inf)

and fits the W-bit range [lo, hi] (signed: [-2^(W-1), 2^(W-1) - 1]; unsigned: [0, 2^W - 1])
by the overflow mode O:

- WRAP: keep the low W bits (two's complement; ap_fixed's default)
- SAT:  clamp to [lo, hi]

Products of two codes are exact (F1 + F2 fractional bits) and sums of codes with the same F are
exact integer sums; with WRAP, the low W bits of a sum equal the sum of the wrapped terms, so
an accumulator that merely wraps gives the right answer whenever the final sum fits. All codes
are int64 here: every width this module admits stays far below 63 bits (`MAX_WIDTH`), products
of two such codes included.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

__all__ = ["FixedType", "MAX_WIDTH", "integer_bits_for", "requantize", "to_codes"]

MAX_WIDTH = 40  # accumulators; data and weights stay <= 24 bits, so products fit int64
_ROUNDING = ("TRN", "RND")
_OVERFLOW = ("WRAP", "SAT")
_PATTERN = re.compile(r"^(u?)fixed<\s*(\d+)\s*,\s*(-?\d+)\s*(?:,\s*(\w+)\s*)?(?:,\s*(\w+)\s*)?"
                      r"(?:,\s*\d+\s*)?>$")


@dataclass(frozen=True)
class FixedType:
    """`ap_fixed<width, integer, rounding, overflow>`; `signed=False` is `ap_ufixed`."""

    width: int
    integer: int
    signed: bool = True
    rounding: str = "TRN"
    overflow: str = "WRAP"

    def __post_init__(self) -> None:
        if not 1 <= self.width <= MAX_WIDTH:
            raise ValueError(f"fixed-point width {self.width} outside 1..{MAX_WIDTH}")
        if self.rounding not in _ROUNDING or self.overflow not in _OVERFLOW:
            raise ValueError(f"unsupported fixed-point modes {self.rounding}/{self.overflow}")

    @property
    def frac(self) -> int:
        return self.width - self.integer

    @property
    def lo(self) -> int:
        return -(1 << (self.width - 1)) if self.signed else 0

    @property
    def hi(self) -> int:
        return (1 << (self.width - 1)) - 1 if self.signed else (1 << self.width) - 1

    @property
    def max_value(self) -> float:
        return self.hi * 2.0 ** -self.frac

    def hls(self) -> str:
        """The hls4ml precision string, e.g. `fixed<16,6,RND,SAT>`."""
        return f"{'' if self.signed else 'u'}fixed<{self.width},{self.integer}," \
               f"{self.rounding},{self.overflow}>"

    __str__ = hls

    @classmethod
    def parse(cls, text: str) -> FixedType:
        m = _PATTERN.match(text.replace("ap_", "").strip())
        if m is None:
            raise ValueError(f"not a fixed-point type: {text!r}")
        u, w, i, q, o = m.groups()
        return cls(int(w), int(i), not u, q or "TRN", o or "WRAP")

    def codes(self, x: np.ndarray) -> np.ndarray:
        """Real values -> codes of this type (rounded by Q, fitted by O)."""
        return to_codes(np.asarray(x, np.float64), self)

    def values(self, codes: np.ndarray) -> np.ndarray:
        return np.asarray(codes, np.float64) * 2.0 ** -self.frac

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Real values rounded onto this type's grid (as float64)."""
        return self.values(self.codes(x))


def _fit(c: np.ndarray, t: FixedType) -> np.ndarray:
    if t.overflow == "SAT":
        return np.clip(c, t.lo, t.hi)
    mask = (1 << t.width) - 1
    c = np.bitwise_and(c, mask)
    if t.signed:
        c = np.where(c > t.hi, c - (1 << t.width), c)
    return c


def to_codes(x: np.ndarray, t: FixedType) -> np.ndarray:
    """Real values (float64; exact scaling by 2^F) -> int64 codes of `t`."""
    scaled = np.asarray(x, np.float64) * 2.0 ** t.frac
    scaled = np.floor(scaled + 0.5) if t.rounding == "RND" else np.floor(scaled)
    limit = float(1 << 62)
    return _fit(np.clip(scaled, -limit, limit).astype(np.int64), t)


def requantize(codes: np.ndarray, frac_in: int, t: FixedType) -> np.ndarray:
    """Codes with `frac_in` fractional bits -> codes of `t` (ap_fixed assignment)."""
    c = np.asarray(codes, np.int64)
    shift = frac_in - t.frac
    if shift > 0:
        if t.rounding == "RND":
            c = c + (1 << (shift - 1))
        c = c >> shift  # arithmetic shift: floor
    elif shift < 0:
        c = c << (-shift)
    return _fit(c, t)


def integer_bits_for(lo: float, hi: float, signed: bool = True) -> int:
    """The fewest integer bits (sign included when `signed`) holding every value of [lo, hi]
    without overflow: 2^(I-1) > max(|lo|, hi) for signed, 2^I > hi for unsigned."""
    m = max(abs(float(lo)), abs(float(hi)), 2.0 ** -16)
    bits = int(np.floor(np.log2(m))) + 1  # 2^bits > m
    return bits + 1 if signed else bits
