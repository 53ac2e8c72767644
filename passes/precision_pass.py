"""The "precision" pass: per-layer precision assignment and lowering (`apply_precision`) run
as a pass.

The speed proxy that ranks layers (how much faster a layer runs in int8 or fp16 on the target)
is the cost model's answer, and the cost model sits above the passes: the pass takes it from
`ctx.speed_proxy` (a factory `(graph, profile, backend name) -> proxy`, which compile() sets
to `compiler.cost.layer_proxy.speed_proxy`); without one, `apply_precision` uses the documented
`passes.precision.RooflineProxy`.
"""

from __future__ import annotations

from dataclasses import dataclass

from compiler.ir import Graph
from compiler.precision_api import apply_precision, backend_name
from passes.base import Pass, PassConfig, PassContext, PassResult, register_pass

__all__ = ["PrecisionConfig", "PrecisionPass"]


@dataclass(frozen=True)
class PrecisionConfig(PassConfig):
    """precision: fp32|fp16|bf16|int8|mixed|int4-weight; the rest as in `apply_precision`."""

    precision: str = "mixed"
    min_sqnr_db: float | None = None
    max_metric_loss: float | None = None
    calibration_method: str | None = None
    bias_correction: bool | None = None


@register_pass
class PrecisionPass(Pass):
    """Assign and lower per-layer precision. Reads the calibration samples and an optional
    metric from `ctx.options["calibration"]` / `ctx.options["metric"]` and the speed proxy
    from `ctx.speed_proxy`; the report goes to `PassResult.stats["report"]`."""

    name = "precision"
    Config = PrecisionConfig

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        cfg = self.config
        constraints = {k: v for k, v in (("min_sqnr_db", cfg.min_sqnr_db),
                                         ("max_metric_loss", cfg.max_metric_loss),
                                         ("calibration_method", cfg.calibration_method),
                                         ("bias_correction", cfg.bias_correction))
                       if v is not None}
        proxy = ctx.speed_proxy(graph, ctx.profile, backend_name(ctx.backend)) \
            if ctx.speed_proxy is not None else None
        report = apply_precision(graph, ctx.profile, ctx.backend, cfg.precision,
                                 ctx.options.get("calibration"), constraints,
                                 metric=ctx.options.get("metric"), proxy=proxy)
        changed = any(v["precision"] != "fp32" for v in report["layers"].values())
        return PassResult(changed, {"report": report})
