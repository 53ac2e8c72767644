"""Dead-code elimination: remove nodes none of whose outputs reach a graph output.

A node is live if one of its outputs is a graph output or is read by a live node (including
reads from inside a subgraph). Walking nodes in reverse topological order decides liveness in
one pass; unused initializers go too. Subgraphs are cleaned recursively.
"""

from __future__ import annotations

from compiler.ir import Graph
from passes.base import Pass, PassContext, PassResult, register_pass

__all__ = ["DeadCodeElimination", "eliminate_dead_code"]


def eliminate_dead_code(graph: Graph) -> tuple[int, int]:
    """Remove dead nodes and initializers; returns (nodes, initializers) removed."""
    removed = 0
    for node in reversed(graph.nodes):
        if any(o.uses or o.is_graph_output() for o in node.outputs):
            for sg in node.subgraphs():
                r, _ = eliminate_dead_code(sg)
                removed += r
            continue
        graph.remove(node)
        removed += 1
    inits = graph.remove_unused_initializers()
    return removed, inits


@register_pass
class DeadCodeElimination(Pass):
    """Remove nodes and initializers that do not contribute to any graph output."""

    name = "dce"

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        nodes, inits = eliminate_dead_code(graph)
        return PassResult(bool(nodes or inits), {"nodes_removed": nodes,
                                                 "initializers_removed": inits})
