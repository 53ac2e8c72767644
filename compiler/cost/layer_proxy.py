"""The cost model as the precision assignment's speed proxy (`passes.precision` asks any proxy
for `layer_time(layer, precision, profile) -> (seconds, why)`).

For one candidate layer (a Conv/MatMul/Gemm described by `passes.precision.LayerInfo`) it builds
the kernels the layer runs as at that precision and times them with the calibrated parameters of
(device, backend), exactly as `compiler.cost.model.predict` times a whole graph:

- the layer itself: class conv / dwconv / matmul / attention (two activations), FLOPs = 2 MACs,
  reduction length K, bytes = weights + input + output at the precision's widths (int8: one
  byte each; int4-weight: half a byte per weight, float activations; fp16/bf16: two bytes);
- int8 on a backend without native Q/DQ fusion (ONNX Runtime): one QuantizeLinear kernel for
  the layer's float input (read 4 bytes, write 1 per element), as at the edge of an int8 region;
- half precision where the backend has no half kernels on the unit (ONNX Runtime on x86) runs
  at fp32, so it never shows a gain.

The model's whole-graph terms (per-call overhead) cancel in gain = t_fp32 - t_int8 and are left
out. `RooflineProxy`'s kernel rules for CPUs without an int8 dot product still apply (a host
calibration comes from one CPU; a profile of another CPU keeps what is known about its kernels).

Attention MatMuls (two activations, quantized on the fly) are a fact of (device, backend), not
a constant: the fit shares one attention/int8 efficiency between isolated attention blocks and
those inside models, so its prediction alone is not trusted for them. They get an int8 gain only
where the calibration of (device, backend) measured its attention-only cases (`ATTENTION_CASE`,
both MatMuls int8) faster at int8 than fp32 in every case; where it measured them no faster (this
repository's Xeon host: OpenVINO attn_s256 0.118 -> 0.146 ms, ONNX Runtime 0.071 -> 0.124 ms) or
never measured them, they stay float and the reason cites the numbers. A unit without an int8
dot product keeps them float first (`RooflineProxy`).
A layer class the calibration never measured at that precision (int8 attention MatMuls: the
benchmark quantizes only layers with constant weights) gets no gain: the fitted efficiency
would be the generic prior, and the assignment only acts on measured gains.

`speed_proxy` (what compile() and the search hand to `compiler.precision_api.apply_precision`,
and set as `PassContext.speed_proxy` for the precision pass) is this proxy when a calibration
file exists for (device, backend), i.e. when the numbers come from measurements; elsewhere the
documented `RooflineProxy`, whose CPU rules (no int8 gain for depthwise, short or attention
layers without an int8 dot product) encode what an uncalibrated model cannot know.
"""

from __future__ import annotations

from typing import Any

from compiler.cost.kernels import ACT_WIDTH, NATIVE_FUSION, WEIGHT_WIDTH, Kernel, half_kernels
from compiler.cost.memory import weight_bytes
from compiler.cost.model import time_kernels
from compiler.cost.params import Params, eff_key, load_calibration
from compiler.ir import Graph
from passes.precision import RooflineProxy

__all__ = ["ATTENTION_CASE", "CostModelProxy", "attention_evidence", "speed_proxy"]

# Calibration cases that are an attention block alone (benchmarks/cost.py names them so).
ATTENTION_CASE = "attn_"


def attention_evidence(measurements) -> tuple[tuple[str, float, float], ...]:
    """(case, fp32 ms, int8 ms) of a calibration's attention-only cases (fused configs)."""
    got: dict[str, dict[str, float]] = {}
    for m in measurements:
        cfg = m.get("config", {})
        if str(m.get("case", "")).startswith(ATTENTION_CASE) and cfg.get("fusion", True) and \
                int(cfg.get("threads", 0)) == 0 and cfg.get("precision") in ("fp32", "int8"):
            got.setdefault(m["case"], {})[cfg["precision"]] = float(m["min_ms"])
    return tuple((c, t["fp32"], t["int8"]) for c, t in sorted(got.items())
                 if {"fp32", "int8"} <= set(t))


class CostModelProxy:
    """Layer times from the calibrated cost model of (profile, backend)."""

    def __init__(self, backend: str, params: Params, source: str, footprint_bytes: float = 0.0,
                 attention: tuple[tuple[str, float, float], ...] = ()):
        self.backend, self.params, self.source = backend, params, source
        self.footprint = footprint_bytes  # the model's bytes, for its last-level-cache share
        self.attention = attention  # `attention_evidence` of the calibration

    @classmethod
    def for_target(cls, profile, backend: str, footprint_bytes: float = 0.0
                   ) -> CostModelProxy | None:
        """The proxy for a calibrated (profile, backend); None without a calibration file."""
        cal = load_calibration(profile, backend)
        if cal is None:
            return None
        return cls(backend, cal.params_for(profile), cal.describe(), footprint_bytes,
                   attention_evidence(cal.measurements))

    def attention_rule(self, profile) -> str:
        """Why int8 attention MatMuls gain nothing on (profile, backend); "" where this
        calibration measured every attention-only case faster at int8."""
        where = f"{profile.name}/{self.backend}"
        if not self.attention:
            return (f"attention MatMul (two activations): int8 never measured for {where}: "
                    "no gain claimed")
        slow = [(c, f, i) for c, f, i in self.attention if i >= f]
        if not slow:
            return ""
        c, f, i = slow[-1]
        return (f"attention MatMul (two activations): int8 measured no faster than fp32 on "
                f"{where} ({c}: {f:.3f} -> {i:.3f} ms)")

    def kernels(self, layer: Any, precision: str, profile) -> list[Kernel]:
        cfg = {"backend": self.backend, "precision": precision, "fusion": True, "threads": 0,
               "unit": None, "power_mode": None}
        prec = precision
        if prec in ("fp16", "bf16") and not half_kernels(cfg, profile, layer.op_type):
            prec = "fp32"
        cls = "dwconv" if layer.depthwise else "conv" if "Conv" in layer.op_type else \
            "attention" if layer.dynamic else "matmul"
        w_b, a_b = WEIGHT_WIDTH.get(prec, 4.0), ACT_WIDTH.get(prec, 4.0)
        if layer.dynamic:
            w_b = a_b
        nbytes = w_b * layer.weight_elems + a_b * (layer.input_elems + layer.output_elems)
        out = [Kernel(layer.name, (layer.op_type,), cls, prec, 2.0 * layer.macs, nbytes,
                      float(layer.reduction), spatial=float(layer.spatial))]
        if prec == "int8" and not NATIVE_FUSION.get(self.backend, False):
            n = float(layer.input_elems)
            out.append(Kernel(f"{layer.name}/q", ("QuantizeLinear",), "elementwise", "fp32",
                              3.0 * n, 5.0 * n))
        return out

    def _time(self, ks: list[Kernel], profile) -> float:
        t, _ = time_kernels(ks, self.params, profile, {"backend": self.backend}, self.footprint)
        return t - self.params.call_us * 1e-6  # a per-inference cost, not the layer's

    def layer_time(self, layer: Any, precision: str, profile) -> tuple[float, str]:
        ks = self.kernels(layer, precision, profile)
        t = self._time(ks, profile)
        if precision == "fp32":
            return t, ""
        ref = self._time(self.kernels(layer, "fp32", profile), profile)
        s, rule = RooflineProxy().compute_speedup(layer, precision, profile)
        if s <= 1.0 and rule:  # a kernel rule of the unit (no int8 dot product): no gain
            return max(t, ref + 1e-9), rule
        key = eff_key(ks[0].op_class, ks[0].precision)
        if self.params.measured and key not in self.params.measured:
            return max(t, ref + 1e-9), (f"{key} kernels were never measured for "
                                        f"{self.backend} here: no gain claimed")
        rule = self.attention_rule(profile) if layer.dynamic and precision == "int8" else ""
        if rule:
            return max(t, ref + 1e-9), rule
        if t >= ref:
            return t, (f"cost model ({self.source.split(':')[0]}): {precision} "
                       f"{t * 1e6:.1f} us vs fp32 {ref * 1e6:.1f} us, not faster")
        return t, ""


def speed_proxy(graph: Graph, profile, backend: str) -> CostModelProxy | RooflineProxy:
    """The precision assignment's speed proxy: the cost model where (device, backend) is
    calibrated from measurements, else the documented `RooflineProxy`."""
    return CostModelProxy.for_target(profile, backend, float(weight_bytes(graph))) or \
        RooflineProxy()
