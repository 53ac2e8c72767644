"""Analytic resources and latency of an hls4ml dataflow design, and the reuse-factor search.

Per weight layer with reuse factor R (each multiplier is used R times per result; hls4ml's
ReuseFactor) and `m = weights / R` multipliers (dense: per inference; convolutions in
io_stream: per input pixel, the same kernel for every pixel):

- DSP: one DSP48E2 (27x18 signed multiplier) per multiplier whose operands are both wider
  than `LUT_MULT_BITS` (10) bits, two when the wider operand exceeds 27 bits or the narrower
  18 bits; narrower products are built from LUTs. hls4ml reports the same split: below about
  10 bits Vivado implements the multiplications in fabric (arXiv 1804.06913, Sec. 5.3, the DSP
  count falls to zero for narrow weights).
- LUT: a LUT multiplier of a x b bits ~ a*b/2 LUT6 (shift-and-add partial products two bits
  per LUT, estimated), plus one LUT per accumulator bit per adder (carry chain), plus
  `LAYER_LUT` of control per layer and a line buffer of (kh - 1) image rows in SRL32 shift
  registers for each kh x kw convolution (estimated).
- BRAM36: the Resource strategy (R > 1) keeps weights in block RAM reshaped to m words of
  depth R (one 72 x 512 BRAM36 per 72 bits of width per 512 of depth, when the depth reaches
  `BRAM_MIN_DEPTH`); io_stream FIFOs hold one tensor's pixels (hls4ml's default depth: H*W,
  `fpga_types.py`) at C * bits width, in BRAM once deep enough.
- latency (cycles at the profile clock): a dense kernel takes R cycles for its multipliers
  plus an adder tree of ceil(log2(n_in) / 2) cycles (two adder levels per 5 ns cycle), plus
  one cycle for the cast; activations and pooling take one cycle. io_parallel chains add up
  (II = max R). io_stream layers overlap (dataflow): a layer streams its padded input pixels
  at one per R cycles, the slowest layer sets the interval, the sum of the per-layer depths
  is added once. With these rules the jet-tagging MLP 16-64-32-32-5 at R = 1 takes 18
  cycles = 90 ns at 200 MHz, inside the published 75-150 ns range of hls4ml for it (arXiv
  1804.06913, Sec. 5; 'tens of ns to ~100 ns'). Nothing here is fitted to synthesis reports:
  this machine has no vitis_hls; bundles carry build.sh to get the real numbers.

`search_reuse` starts every layer at R = 1 (lowest latency) and, while the design exceeds
`utilization` of any KV260 resource, moves the layer that saves the most of the binding
resource per added cycle to its next valid reuse factor (hls4ml's rule, `valid_reuse`). When
no move is left it raises ConstraintError naming the smallest footprint it reached.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from compiler.errors import ConstraintError
from compiler.fpga_layers import WEIGHT_KINDS, FpgaLayer

__all__ = ["Footprint", "LayerEstimate", "estimate", "predict_dataflow", "reuse_options",
           "search_reuse", "valid_reuse", "KV260_RESOURCES", "strategy_for"]

LUT_MULT_BITS = 10
LAYER_LUT = 150
BRAM_MIN_DEPTH = 64
#: AMD K26 SOM (Kria KV260): DS987 / reference/npu-fpga-notes.md
KV260_RESOURCES = {"lut": 117_120, "bram": 144, "uram": 64, "dsp": 1_248}


def valid_reuse(n_in: int, n_out: int, rf: int) -> bool:
    """hls4ml's reuse-factor rule for a dense kernel (FPGABackend._validate_reuse_factor):
    the multiplications split evenly over R cycles."""
    mult = min(n_in, rf)
    limit = math.ceil(n_in * n_out / mult)
    ok = (limit % n_out == 0) or rf >= n_in
    ok = ok and (rf % n_in == 0 or rf < n_in)
    return ok and (n_in * n_out) % rf == 0


def _kernel(layer: FpgaLayer) -> tuple[int, int]:
    """(n_in, n_out) of the dense kernel a weight layer runs (per pixel for convolutions)."""
    if layer.kind == "dense":
        return layer.in_shape[0], layer.out_shape[0]
    kh, kw = layer.kernel
    if layer.kind == "dwconv2d":
        return kh * kw, layer.out_shape[2]
    return kh * kw * layer.in_shape[2], layer.out_shape[2]


def _divisors(n: int) -> list[int]:
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def reuse_options(layer: FpgaLayer) -> list[int]:
    """The valid reuse factors of a weight layer, ascending (all divide n_in * n_out)."""
    n_in, n_out = _kernel(layer)
    return [r for r in _divisors(n_in * n_out) if valid_reuse(n_in, n_out, r)]


def strategy_for(rf: int) -> str:
    """Latency (weights in registers, fully pipelined) at R = 1, Resource (weights in BRAM,
    multipliers shared) above."""
    return "Latency" if rf == 1 else "Resource"


@dataclass
class LayerEstimate:
    name: str
    kind: str
    reuse: int = 1
    strategy: str = "Latency"
    multipliers: int = 0
    dsp: int = 0
    lut: int = 0
    bram: float = 0.0
    depth: int = 1  # pipeline cycles
    interval: int = 1  # cycles between inputs it can accept

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "reuse_factor": self.reuse, "strategy": self.strategy,
                "multipliers": self.multipliers, "dsp": self.dsp, "lut": self.lut,
                "bram36": round(self.bram, 1), "latency_cycles": self.depth,
                "interval_cycles": self.interval}


@dataclass
class Footprint:
    layers: list[LayerEstimate] = field(default_factory=list)
    latency_cycles: int = 0
    interval_cycles: int = 0
    clock_ns: float = 5.0

    @property
    def dsp(self) -> int:
        return sum(e.dsp for e in self.layers)

    @property
    def lut(self) -> int:
        return sum(e.lut for e in self.layers)

    @property
    def bram(self) -> int:
        return math.ceil(sum(e.bram for e in self.layers))

    def utilization(self, limits: Mapping[str, int]) -> dict[str, float]:
        return {"dsp": self.dsp / limits["dsp"], "lut": self.lut / limits["lut"],
                "bram": self.bram / limits["bram"]}

    def summary(self, limits: Mapping[str, int] = KV260_RESOURCES) -> dict[str, Any]:
        return {"dsp": self.dsp, "lut": self.lut, "bram36": self.bram,
                "latency_cycles": self.latency_cycles,
                "latency_us": round(self.latency_cycles * self.clock_ns * 1e-3, 4),
                "interval_cycles": self.interval_cycles,
                "throughput_per_s": round(1e9 / (self.interval_cycles * self.clock_ns), 1),
                "clock_ns": self.clock_ns,
                "utilization": {k: round(v, 4) for k, v in self.utilization(limits).items()},
                "limits": dict(limits)}

    def text(self) -> str:
        return f"{self.dsp} DSP, {self.lut} LUT, {self.bram} BRAM36"


def _bram(width_bits: int, depth: int) -> float:
    if depth < BRAM_MIN_DEPTH or width_bits * depth <= 18 * 1024:
        return 0.0
    return math.ceil(width_bits / 72) * math.ceil(depth / 512)


def _layer(layer: FpgaLayer, rf: int, stream: bool, in_bits: int) -> LayerEstimate:
    t = layer.types
    res_bits = t["result"].width if "result" in t else in_bits
    e = LayerEstimate(layer.name, layer.kind, rf, strategy_for(rf) if
                      layer.kind in WEIGHT_KINDS else "")
    e.lut = LAYER_LUT
    in_pixels = 1
    if len(layer.in_shape) == 3:
        top, bottom, left, right = layer.pads
        in_pixels = (layer.in_shape[0] + top + bottom) * (layer.in_shape[1] + left + right)
    if layer.kind in WEIGHT_KINDS:
        n_in, n_out = _kernel(layer)
        w_bits = t["weight"].width if "weight" in t else 16
        acc_bits = t["accum"].width if "accum" in t else 16
        m = math.ceil(layer.weight.size / rf)
        e.multipliers = m
        lo, hi = sorted((in_bits, w_bits))
        if lo > LUT_MULT_BITS:
            e.dsp = m * (2 if hi > 27 or lo > 18 else 1)
        else:
            e.lut += m * math.ceil(lo * hi / 2)
        e.lut += m * acc_bits
        if rf > 1:
            e.bram += _bram(m * w_bits, rf)
        if stream and layer.kind != "dense" and layer.kernel[0] > 1:
            width = layer.in_shape[1] + layer.pads[2] + layer.pads[3]
            e.lut += math.ceil((layer.kernel[0] - 1) * width * layer.in_shape[2] * in_bits / 32)
        e.depth = rf + math.ceil(math.log2(max(n_in, 2)) / 2) + 1
        e.interval = rf * in_pixels if stream and layer.kind != "dense" else rf
    else:
        e.depth = 1
        e.interval = in_pixels if stream and len(layer.in_shape) == 3 else 1
        if layer.kind == "gap2d":
            e.lut += layer.in_shape[2] * t["accum"].width if "accum" in t else 0
    if stream and len(layer.out_shape) == 3:  # the FIFO after the layer
        e.bram += _bram(layer.out_shape[2] * res_bits, layer.pixels)
    return e


def estimate(layers: list[FpgaLayer], reuse: Mapping[str, int], *, io_type: str,
             in_bits: int, clock_ns: float = 5.0) -> Footprint:
    """Resources and latency of the chain at the given reuse factors."""
    stream = io_type == "io_stream"
    fp = Footprint(clock_ns=clock_ns)
    bits = in_bits
    for layer in layers:
        e = _layer(layer, int(reuse.get(layer.name, 1)), stream, bits)
        fp.layers.append(e)
        bits = layer.types["result"].width if "result" in layer.types else bits
    depth = sum(e.depth for e in fp.layers)
    fp.interval_cycles = max(e.interval for e in fp.layers)
    fp.latency_cycles = depth + (fp.interval_cycles if stream else 0)
    return fp


def _fits(fp: Footprint, limits: Mapping[str, int], utilization: float) -> bool:
    return all(v <= utilization for v in fp.utilization(limits).values())


def search_reuse(layers: list[FpgaLayer], *, io_type: str, in_bits: int,
                 clock_ns: float = 5.0, limits: Mapping[str, int] = KV260_RESOURCES,
                 utilization: float = 1.0, fixed: Mapping[str, int] | None = None,
                 device: str = "kria-kv260") -> tuple[dict[str, int], Footprint]:
    """Reuse factors meeting `utilization` x `limits` with the lowest predicted latency
    (greedy, see module docstring). `fixed`: reuse factors the user set (not searched)."""
    fixed = dict(fixed or {})
    weighted = [layer for layer in layers if layer.kind in WEIGHT_KINDS]
    options = {layer.name: reuse_options(layer) for layer in weighted}
    for name, rf in fixed.items():
        if name in options and rf not in options[name]:
            raise ConstraintError(f"reuse factor {rf} is not valid for layer {name!r}; valid: "
                                  f"{options[name][:12]}...")
    reuse = {layer.name: fixed.get(layer.name, 1) for layer in weighted}

    def run(r) -> Footprint:
        return estimate(layers, r, io_type=io_type, in_bits=in_bits, clock_ns=clock_ns)

    fp = run(reuse)
    while not _fits(fp, limits, utilization):
        util = fp.utilization(limits)
        binding = max(util, key=util.get)
        best = None
        for name in reuse:
            if name in fixed:
                continue
            bigger = [r for r in options[name] if r >= 2 * reuse[name]] or \
                [r for r in options[name] if r > reuse[name]]
            if not bigger:
                continue
            trial = {**reuse, name: bigger[0]}
            tf = run(trial)
            saved = util[binding] - tf.utilization(limits)[binding]
            added = max(tf.latency_cycles - fp.latency_cycles, 0) + 1
            if saved > 0 and (best is None or saved / added > best[0]):
                best = (saved / added, trial, tf)
        if best is None:
            use = {k: f"{v:.0%}" for k, v in fp.utilization(limits).items()}
            raise ConstraintError(
                f"the model does not fit {device}: the smallest footprint reachable (reuse "
                f"factors up to {max(reuse.values())}) is {fp.text()} ({use} of the device, "
                f"limit {utilization:.0%}); shrink the model or prune it")
        _, reuse, fp = best
    return reuse, fp


def predict_dataflow(graph, profile, clock_ns: float = 5.0) -> tuple[float, float, list[str]]:
    """(latency_ms, on-chip memory MB, notes) of `graph` as an hls4ml dataflow design: the
    reuse search at the graph's fixed-point types (16 bits where none are assigned yet);
    a design that cannot fit is priced at its smallest footprint's latency with a note."""
    from compiler.fixedpoint import FixedType
    from compiler.fpga_layers import input_type, layers_from_graph

    layers = layers_from_graph(graph)
    notes = ["FPGA dataflow model (compiler/cost/fpga.py): analytic, not fitted to synthesis"]
    if any(not ly.types for ly in layers):
        notes.append("no fixed-point types yet: 16-bit types assumed")
        t16 = FixedType(16, 6)
        for ly in layers:
            ly.types = ly.types or ({"weight": t16, "bias": t16, "accum": FixedType(32, 12),
                                     "result": t16} if ly.kind in WEIGHT_KINDS else
                                    {"result": t16, "accum": FixedType(32, 12)})
    in_t = input_type(graph) or FixedType(16, 6)
    io = "io_stream" if any(ly.kind in ("conv2d", "dwconv2d") for ly in layers) else \
        "io_parallel"
    try:
        _, fp = search_reuse(layers, io_type=io, in_bits=in_t.width, clock_ns=clock_ns,
                             device=profile.name)
    except ConstraintError as e:
        options = {ly.name: reuse_options(ly)[-1] for ly in layers if ly.kind in WEIGHT_KINDS}
        fp = estimate(layers, options, io_type=io, in_bits=in_t.width, clock_ns=clock_ns)
        notes.append(f"does not fit: {e}")
    weight_bits = sum(ly.weight.size * ly.types["weight"].width for ly in layers
                      if ly.kind in WEIGHT_KINDS)
    notes.append(f"{fp.text()}, {fp.latency_cycles} cycles at {clock_ns} ns ({io})")
    return fp.latency_cycles * clock_ns * 1e-6, weight_bits / 8 / 2**20, notes
