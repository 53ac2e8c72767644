"""Sibling projection merging (Q/K/V): one wide GEMM instead of several narrow ones.

    [x·W₁ (+ b₁), …, x·Wₙ (+ bₙ)] = Split(x·[W₁ | … | Wₙ] (+ [b₁ | … | bₙ]), axis=-1)

exactly (column blocks of a product are products with column blocks). Applied when two or more
MatMuls read the same x as their first input with constant 2-D weights of the same dtype and
the same K; the biases are merged too when every one of them has a constant 1-D bias Add as its
only reader. Standard ONNX (MatMul, Add, Split), always applied; nodes already recorded in a
fusion group are left alone.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from compiler.ir import Graph, Node
from passes.rewrite import (
    GraphRule,
    RuleSet,
    RuleStats,
    const_array,
    emit,
    remove_nodes,
    replace_output,
)

__all__ = ["MergeSiblingProjections", "RULE_SET"]


def _bias_add(mm: Node) -> tuple[Node, np.ndarray] | None:
    out = mm.outputs[0]
    if len(out.uses) != 1 or out.is_graph_output():
        return None
    add, i = out.uses[0]
    if add.op_type != "Add" or add.domain or "fusion_group" in add.meta:
        return None
    b = const_array(add.inputs[1 - i])
    if b is None or b.ndim != 1:
        return None
    return add, b


class MergeSiblingProjections(GraphRule):
    name = "qkv_merge"

    def run(self, graph: Graph, ctx: Any, stats: RuleStats) -> int:
        groups: dict[tuple, list[Node]] = {}
        for n in graph:
            if n.op_type != "MatMul" or n.domain or "fusion_group" in n.meta:
                continue
            w = const_array(n.inputs[1])
            if w is None or w.ndim != 2 or n.inputs[0] is None:
                continue
            groups.setdefault((id(n.inputs[0]), w.shape[0], w.dtype.str), []).append(n)
        done = 0
        for mms in groups.values():
            if len(mms) < 2:
                continue
            stats.matched += 1
            self._merge(graph, mms)
            stats.rewritten += 1
            done += 1
        return done

    def _merge(self, graph: Graph, mms: list[Node]) -> None:
        ws = [const_array(m.inputs[1]) for m in mms]
        adds = [_bias_add(m) for m in mms]
        with_bias = all(a is not None and a[1].shape[0] == w.shape[1] for a, w in zip(adds, ws))
        ends = [a[0] if with_bias else m for a, m in zip(adds, mms)]
        first = mms[0]
        wv = graph.make_constant(np.concatenate(ws, axis=1), "qkv_weight")
        y = emit(graph, first, "MatMul", [first.inputs[0], wv], hint="qkv_matmul").outputs[0]
        if with_bias:
            bv = graph.make_constant(np.concatenate([a[1] for a in adds]), "qkv_bias")
            y = emit(graph, first, "Add", [y, bv], hint="qkv_bias").outputs[0]
        sizes = [w.shape[1] for w in ws]
        ins = [y]
        attrs: dict[str, Any] = {"axis": -1}
        if graph.root.opset_imports.get("", 1) >= 13:
            ins.append(graph.make_constant(np.array(sizes, np.int64), "qkv_split"))
        else:
            attrs["split"] = sizes
        split = emit(graph, first, "Split", ins, attrs=attrs, outputs=len(mms), hint="qkv_split")
        for e, o in zip(ends, split.outputs):
            replace_output(graph, e.outputs[0], o)
        remove_nodes(graph, list(dict.fromkeys(ends + mms)))  # ends is mms without biases


RULE_SET = RuleSet("qkv", [MergeSiblingProjections()])
