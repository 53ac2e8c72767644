"""The "fusion" pass: apply the fusion rule sets (passes/fusion_rules) until nothing changes.

Each rule is a `pattern / check / rewrite` (see passes/rewrite.py). Rules that produce a fused
op ask the backend (`ctx.accepts`) whether it takes that op; when it does not, the match is
recorded as a fusion group in `node.meta["fusion_group"]` (the cost model prices it as one
kernel) and the graph is left as it is. Standard-ONNX rewrites (Conv+BN folding, MatMul+Add to
Gemm, transpose cancellation, CSE) always apply. Subgraphs (If/Loop bodies) are fused too.

Stats per rule: matched, rewritten, grouped (recorded as a fusion group), refused by reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from compiler.errors import CompileError
from compiler.ir import Graph
from passes.base import Pass, PassConfig, PassContext, PassResult, register_pass
from passes.fusion_rules import RULE_SETS, get_rule_set
from passes.rewrite import RuleStats, apply_rule_sets

__all__ = ["FusionConfig", "FusionPass", "PIPELINE"]


@dataclass(frozen=True)
class FusionConfig(PassConfig):
    rule_sets: tuple[str, ...] | None = None  # None: every rule set, in RULE_SETS order
    max_sweeps: int = 4


def _graphs(graph: Graph) -> list[Graph]:
    out = [graph]
    for n in graph:
        for sg in n.subgraphs():
            out.extend(_graphs(sg))
    return out


@register_pass
class FusionPass(Pass):
    """Pattern-based, target-aware operator fusion."""

    name = "fusion"
    Config = FusionConfig

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        names = self.config.rule_sets or tuple(RULE_SETS)
        unknown = [n for n in names if n not in RULE_SETS]
        if unknown:
            raise CompileError(f"fusion: unknown rule set(s) {unknown}; available: "
                               f"{', '.join(RULE_SETS)}")
        sets = [get_rule_set(n) for n in names]
        before = sum(len(g) for g in _graphs(graph))
        groups_before = self._groups(graph)
        total, sweeps, merged = 0, 0, {}
        for g in _graphs(graph):
            n, s, stats = apply_rule_sets(g, sets, ctx, self.config.max_sweeps)
            total, sweeps = total + n, max(sweeps, s)
            for k, st in stats.items():
                acc = merged.setdefault(k, RuleStats())
                acc.matched += st.matched
                acc.rewritten += st.rewritten
                acc.grouped += st.grouped
                for r, c in st.refused.items():
                    acc.refused[r] += c
        groups = self._groups(graph)
        stats = {"rewrites": total, "sweeps": sweeps, "nodes_before": before,
                 "nodes_after": sum(len(g) for g in _graphs(graph)), "groups": len(groups),
                 "rules": {k: v.to_dict() for k, v in merged.items()}}
        return PassResult(modified=total > 0 or groups != groups_before, stats=stats)

    @staticmethod
    def _groups(graph: Graph) -> set[str]:
        return {n.meta["fusion_group"]["id"] for g in _graphs(graph) for n in g
                if "fusion_group" in n.meta}


# The "fusion" pipeline: simplify, fuse, clean up what fusion left dead, re-infer shapes.
PIPELINE: list[list[str]] = [
    ["shape_inference"],
    ["identity_elimination", "constant_folding", "dce"],
    ["shape_inference"],
    ["fusion"],
    ["dce"],
    ["shape_inference"],
]


def _register_pipeline() -> None:
    from compiler.pipeline import register_pipeline

    register_pipeline("fusion", PIPELINE)


_register_pipeline()
