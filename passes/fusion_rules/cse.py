"""Common subexpression elimination.

Two nodes compute the same values when they have the same domain, op type, attributes and
inputs; the later one is dropped and its readers read the earlier one's outputs. Walking the
graph in order and keying each node after its inputs were rewired makes chains collapse in one
linear pass. Small constants (≤ 64 elements) are keyed by their contents, so reads of two equal
scalar initializers count as the same input; Constant nodes with equal values merge.

Never merged: nodes with subgraphs, nondeterministic ops (Random*, Multinomial, Bernoulli,
Dropout in training), nodes without inputs other than Constant, and a node whose output is a
graph output that cannot be renamed.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from compiler.ir import Graph, Node, Value
from passes.rewrite import GraphRule, RuleSet, RuleStats, can_bypass, const_array

__all__ = ["CommonSubexpressions", "RULE_SET"]

_NEVER = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
          "Multinomial", "Bernoulli", "Dropout"}
_SMALL = 64


def _freeze(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return tuple(_freeze(x) for x in v)
    if hasattr(v, "numpy") and hasattr(v, "dims"):
        a = np.asarray(v.numpy())
        return ("T", a.dtype.str, a.shape, a.tobytes()) if a.size <= _SMALL else ("id", id(v))
    if isinstance(v, np.ndarray):
        return ("A", v.dtype.str, v.shape, v.tobytes())
    return v


def _input_key(v: Value | None) -> Any:
    if v is None:
        return None
    if v.const is not None and v.const.size <= _SMALL:
        arr = const_array(v)
        if arr is not None:
            return ("c", arr.dtype.str, arr.shape, arr.tobytes())
    return id(v)


def _key(n: Node) -> Any:
    attrs = tuple(sorted((k, a.type, _freeze(a.value)) for k, a in n.attrs.items()))
    if any(isinstance(a[2], tuple) and a[2][:1] == ("id",) for a in attrs):
        return None
    return (n.domain, n.op_type, n.overload, len(n.outputs),
            tuple(_input_key(v) for v in n.inputs), attrs)


class CommonSubexpressions(GraphRule):
    name = "cse"

    def run(self, graph: Graph, ctx: Any, stats: RuleStats) -> int:
        seen: dict[Any, Node] = {}
        merged = 0
        for n in graph:
            if n.op_type in _NEVER or any(True for _ in n.subgraphs()):
                continue
            if not n.inputs and n.op_type != "Constant":
                continue
            key = _key(n)
            if key is None:
                continue
            first = seen.get(key)
            if first is None:
                seen[key] = n
                continue
            stats.matched += 1
            pairs = list(zip(n.outputs, first.outputs))
            if not all(can_bypass(o, f) for o, f in pairs) or sum(
                    o.is_graph_output() for o, _ in pairs) > 0 and any(
                    f.is_graph_output() for _, f in pairs):
                stats.refused["output is a graph output"] += 1
                continue
            for o, f in pairs:
                if o.uses or o.is_graph_output():
                    graph.bypass(o, f)
            if any(o.uses or o.is_graph_output() for o in n.outputs):
                continue
            graph.remove(n)
            stats.rewritten += 1
            merged += 1
        return merged


RULE_SET = RuleSet("cse", [CommonSubexpressions()])
