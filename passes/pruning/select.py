"""Choosing what to remove: a FLOPs target met by one global ranking of standardized scores.

Scores are standardized per group (z = (s - mean) / std, as FLAP does), so a layer whose units
are all alike loses few and one with a long tail of weak units loses many, whatever the layers'
scales. Units are removed in increasing z, one *step* at a time: a step is one unit, or in a
group with block constraints (grouped convs) the weakest remaining unit of every block. No group
loses more than `max_group_ratio` of its units, and every group keeps one.

The FLOPs of a plan are predicted without rewriting: each node's FLOPs (compiler.cost.flops)
scale with the kept fraction of every distinct channel axis it touches (input channels times
output channels for a Conv, heads for an attention MatMul). The number of steps is found by
bisection, since FLOPs only fall as steps are added. Last, kept counts are rounded to the
device's channel alignment (DeviceProfile.channel_alignment: a 5%-pruned layer whose channels
stop being multiples of 8 can run slower than the dense one), which moves the FLOPs slightly
off target; the plan reports what it reaches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compiler.cost.flops import node_flops
from compiler.ir import Value
from passes.pruning.groups import Analysis

__all__ = ["FlopsModel", "Plan", "choose", "standardize"]


@dataclass
class Plan:
    removed: set[int]
    groups: list[dict[str, Any]] = field(default_factory=list)
    flops_before: float = 0.0
    flops_after: float = 0.0

    @property
    def flops_removed(self) -> float:
        return 1.0 - self.flops_after / self.flops_before if self.flops_before else 0.0


class FlopsModel:
    """Predicted FLOPs of the graph with some units removed; with `node_cost` (node name ->
    cost, e.g. predicted ms) the same scaling applied to another per-node cost."""

    def __init__(self, analysis: Analysis, bindings: dict[str, int] | None = None,
                 node_cost: dict[str, float] | None = None) -> None:
        self.analysis = analysis
        A = analysis.trace.atoms
        self.killers: dict[frozenset, list[set[int]]] = {}
        self.nodes: list[tuple[float, list[frozenset]]] = []
        for node in analysis.graph:
            f = float(node_flops(node, bindings)) if node_cost is None else \
                float(node_cost.get(node.name, 0.0))
            keys: list[frozenset] = []
            vals: list[Value] = [v for v in node.inputs if v is not None] + list(node.outputs)
            for v in vals:
                for lab in analysis.trace.of(v).values():
                    key = frozenset(A.find(a) for t in lab for a in t)
                    if key not in self.killers:
                        self.killers[key] = analysis.position_killers(lab)
                    if key not in keys:
                        keys.append(key)
            self.nodes.append((f, keys))
        self.total = sum(f for f, _ in self.nodes)

    def __call__(self, removed: set[int]) -> float:
        frac = {k: (float(np.mean([not (s & removed) for s in ks])) if ks else 1.0)
                for k, ks in self.killers.items()}
        return sum(f * float(np.prod([frac[k] for k in keys])) for f, keys in self.nodes)


def standardize(analysis: Analysis, scores: dict[int, float]) -> dict[int, float]:
    out: dict[int, float] = {}
    for g in analysis.groups:
        s = np.array([scores.get(u, 0.0) for u in g.units], np.float64)
        sd = s.std()
        z = (s - s.mean()) / sd if sd > 1e-12 * max(abs(s.mean()), 1e-30) else np.zeros_like(s)
        out.update(zip(g.units, z.tolist()))
    return out


def _steps(analysis: Analysis, z: dict[int, float], max_ratio: float,
           per_cost: FlopsModel | None = None):
    steps = []
    for gi, g in enumerate(analysis.groups):
        if g.blocks:
            per = [sorted(b, key=lambda u: z[u]) for b in g.blocks]
            nb = min(len(b) for b in per)
            cap = min(nb - 1, int(max_ratio * nb))
            for k in range(cap):
                units = [b[k] for b in per]
                steps.append((float(np.mean([z[u] for u in units])), gi, k, units))
        else:
            order = sorted(g.units, key=lambda u: z[u])
            cap = min(len(order) - 1, int(max_ratio * len(order)))
            for k in range(cap):
                steps.append((z[order[k]], gi, k, [order[k]]))
    if per_cost is not None:  # ZipLM: least importance lost per unit of cost saved first
        zmin = min((s[0] for s in steps), default=0.0)
        full = per_cost(set())
        saved: dict[int, float] = {}
        for s in steps:  # cost saved per step, from the group's first step
            if s[1] not in saved:
                saved[s[1]] = max(full - per_cost(set(s[3])), 1e-12)
        steps = [((sc - zmin + 1.0) / saved[gi], gi, k, units) for sc, gi, k, units in steps]
    steps.sort(key=lambda s: (s[0], s[1], s[2]))
    return steps


def choose(analysis: Analysis, scores: dict[int, float], ratio: float, *, align: int = 1,
           max_group_ratio: float = 0.8, bindings: dict[str, int] | None = None,
           flops: FlopsModel | None = None, per_cost: bool = False) -> Plan:
    """Remove about `ratio` of the graph's FLOPs (of `flops`' cost), weakest standardized
    units first (with `per_cost`: weakest per cost saved, the step's first unit standing for
    its group's per-unit saving)."""
    flops = flops or FlopsModel(analysis, bindings)
    z = standardize(analysis, scores)
    steps = _steps(analysis, z, max_group_ratio, flops if per_cost else None)
    target = (1.0 - ratio) * flops.total

    def removed_after(m: int) -> set[int]:
        return {u for s in steps[:m] for u in s[3]}

    lo, hi = 0, len(steps)
    if ratio <= 0:
        hi = 0
    elif flops(removed_after(hi)) > target:
        lo = hi
    while lo < hi:
        mid = (lo + hi) // 2
        if flops(removed_after(mid)) <= target:
            hi = mid
        else:
            lo = mid + 1
    removed = _align(analysis, removed_after(lo), z, align)
    plan = Plan(removed, flops_before=flops.total, flops_after=flops(removed))
    for g in analysis.groups:
        r = sum(1 for u in g.units if u in removed)
        plan.groups.append({"group": g.name, "units": len(g.units), "width": g.width,
                            "removed": r, "kept": len(g.units) - r})
    return plan


def _align(analysis: Analysis, removed: set[int], z: dict[int, float], align: int) -> set[int]:
    """Round each channel group's kept count to a multiple of `align` (at least `align`)."""
    if align <= 1:
        return removed
    out = set(removed)
    for g in analysis.groups:
        n = len(g.units)
        if g.blocks or g.width != 1 or n < 2 * align:
            continue
        r = sum(1 for u in g.units if u in removed)
        if not r:
            continue
        kept = max(align, int(round((n - r) / align)) * align)
        kept = min(kept, n)
        order = sorted(g.units, key=lambda u: z[u])
        out -= set(g.units)
        out |= set(order[:n - kept])
    return out
