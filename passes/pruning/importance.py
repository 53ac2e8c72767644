"""Importance of each prunable unit (channel, hidden unit, head, KV group).

A unit's score sums, over every weight the unit's removal cuts, the part of the weight it cuts:

- `magnitude`: sum of W^2 over the removed rows of the layers that create the unit's channels
  and the removed columns of the layers that read them (L2^2 group norm, as DepGraph's
  GroupNormImportance with p=2);
- `activation` (Wanda-sp / FLAP's "WIFN" family): sum over the reading layers of
  ||W[:, c]||^2 * E[x_c^2], the expected squared output the column contributes;
- `wifv` (FLAP): sum over the reading layers of ||W[:, c]||^2 * Var(x_c): what bias
  compensation cannot restore (the mean part of a removed column's contribution is folded into
  the bias, so only its fluctuation is lost).

The activation-aware scores need calibration data (input statistics of each reading layer);
without it, only `magnitude` is available. Scores are standardized per group by selection.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping

import numpy as np

from compiler.errors import ConstraintError
from compiler.ir import constant_value
from passes.pruning.activations import LayerStats, collect_layer_stats
from passes.pruning.groups import Analysis
from passes.pruning.trace import Edit

__all__ = ["IMPORTANCE", "position_energy", "scores"]

IMPORTANCE = ("magnitude", "activation", "wifv")


def position_energy(e: Edit) -> np.ndarray:
    """Sum of squares of the weight cut at each position of the edit's label."""
    w = np.asarray(constant_value(e.node.inputs[e.index]), np.float64)
    if e.kind == "grouped_in":
        o, cg = w.shape[0], w.shape[1]
        og = o // e.groups
        sq = (w * w).reshape(e.groups, og, cg, -1).sum(axis=(1, 3))  # [g, C/g]
        return sq.reshape(-1)
    axes = tuple(i for i in range(w.ndim) if i != e.axis)
    return (w * w).sum(axis=axes)


def _reading_edits(analysis: Analysis) -> list[Edit]:
    return [e for e in analysis.trace.edits
            if e.kind in ("slice", "grouped_in") and e.role == "in"]


def scores(analysis: Analysis, method: str = "magnitude",
           calibration: Iterable[Mapping] | None = None,
           stats: dict[int, LayerStats] | None = None) -> dict[int, float]:
    """Score per unit (the unit's union-find root)."""
    if method not in IMPORTANCE:
        raise ConstraintError(f"unknown importance {method!r}; choose one of "
                              f"{', '.join(IMPORTANCE)}")
    if method != "magnitude" and stats is None:
        if calibration is None:
            raise ConstraintError(f"importance {method!r} needs calibration data; without it "
                                  "use 'magnitude'")
        stats = collect_layer_stats(analysis.graph, {id(e.node): e.node for e in
                                                     _reading_edits(analysis)}.values(),
                                    calibration)
    out: dict[int, float] = defaultdict(float)
    for e in analysis.trace.edits:
        if e.kind not in ("slice", "grouped_in") or e.role not in ("in", "out"):
            continue
        if method != "magnitude" and e.role == "out":
            continue
        energy = position_energy(e)
        if method != "magnitude":
            st = stats.get(id(e.node))
            if st is None or st.sum is None or st.sum.size != energy.size:
                continue
            energy = energy * (st.meansq() if method == "activation" else st.var())
        for p, ks in enumerate(analysis.position_killers(e.label)):
            for u in ks:
                out[u] += float(energy[p])
    return {u: out.get(u, 0.0) for u in analysis.unit_group}
