"""The structured-pruning pass: trace, score, choose, rewrite, recover.

`prune_graph` removes about `ratio` of the graph's FLOPs as whole structures (channels, hidden
units, heads, KV groups) found by passes.pruning.groups, ranked by passes.pruning.importance,
chosen by passes.pruning.select, removed by passes.pruning.apply and, with calibration data,
compensated by passes.pruning.recovery. The report lists every group (kept/removed units), every
unprunable group with its reason, and each recovered layer's reconstruction error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from compiler.errors import ConstraintError
from compiler.ir import Graph
from passes.base import Pass, PassConfig, PassContext, PassResult, register_pass

__all__ = ["PruningConfig", "StructuredPruning", "prune_graph"]

RECOVERY = ("none", "bias", "lstsq", "auto")


def prune_graph(graph: Graph, ratio: float, *, calibration: Iterable[Mapping] | None = None,
                importance: str | None = None, recovery: str | None = None, align: int = 1,
                max_group_ratio: float = 0.8, bindings: dict[str, int] | None = None,
                node_cost: dict[str, float] | None = None) -> dict[str, Any]:
    """Prune `graph` in place; returns the report (see the module docstring).

    Defaults: with calibration data, `wifv` importance and per-layer `auto` recovery; without,
    `magnitude` importance and no recovery (the report says so)."""
    from passes.pruning.apply import apply_plan
    from passes.pruning.groups import analyze
    from passes.pruning.importance import scores
    from passes.pruning.select import FlopsModel, choose
    from passes.shape_inference import infer_shapes

    if not 0.0 <= float(ratio) < 1.0:
        raise ConstraintError(f"pruning ratio must be in [0, 1), got {ratio}")
    if calibration is not None and not isinstance(calibration, (list, tuple)):
        calibration = list(calibration)
    importance = importance or ("wifv" if calibration else "magnitude")
    recovery = recovery or ("auto" if calibration else "none")
    if recovery not in RECOVERY:
        raise ConstraintError(f"unknown recovery {recovery!r}; choose one of "
                              f"{', '.join(RECOVERY)}")
    if recovery != "none" and not calibration:
        raise ConstraintError(f"recovery {recovery!r} needs calibration data")
    infer_shapes(graph)
    analysis = analyze(graph)
    report: dict[str, Any] = {"ratio": float(ratio), "importance": importance,
                              "recovery": recovery, "align": align}
    if not calibration:
        report["note"] = ("no calibration data: magnitude importance only, no reconstruction")
    sc = scores(analysis, importance, calibration)
    cost = FlopsModel(analysis, bindings, node_cost) if node_cost is not None else None
    plan = choose(analysis, sc, float(ratio), align=align, max_group_ratio=max_group_ratio,
                  bindings=bindings, flops=cost, per_cost=node_cost is not None)
    layers: list[dict[str, Any]] = []
    recover = None
    if recovery != "none" and plan.removed:
        from passes.pruning.recovery import prepare

        recover = prepare(analysis, plan.removed, calibration, recovery)
    stats = apply_plan(analysis, plan.removed) if plan.removed else {}
    if recover is not None:
        layers = recover()
    report.update({
        "flops_before": plan.flops_before, "flops_after": plan.flops_after,
        "flops_removed": round(plan.flops_removed, 4),
        "groups": plan.groups,
        "unprunable": [g.to_dict() for g in analysis.unprunable],
        "layers": layers, **stats})
    return report


@dataclass(frozen=True)
class PruningConfig(PassConfig):
    ratio: float = 0.3  # fraction of FLOPs to remove
    importance: str | None = None  # magnitude | activation | wifv (default: see prune_graph)
    recovery: str | None = None  # none | bias | lstsq | auto
    align: int | None = None  # None: the target's channel_alignment
    max_group_ratio: float = 0.8
    calibration: Any = field(default=None, compare=False, repr=False)


@register_pass
class StructuredPruning(Pass):
    """Remove whole channels/heads (see passes.pruning.prune)."""

    name = "pruning"
    Config = PruningConfig

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        c = self.config
        align = c.align if c.align is not None else int(
            getattr(ctx.profile, "channel_alignment", 1) or 1)
        rep = prune_graph(graph, c.ratio, calibration=c.calibration, importance=c.importance,
                          recovery=c.recovery, align=align, max_group_ratio=c.max_group_ratio)
        removed = sum(g["removed"] for g in rep["groups"])
        return PassResult(removed > 0, {"flops_removed": rep["flops_removed"],
                                        "units_removed": removed, "report": rep})
