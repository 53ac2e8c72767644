"""Apply a pruning plan: slice weights, rewrite the sizes the graph spells out, re-infer shapes.

Given the removed units, every edit of the trace is carried out: constant inputs are sliced
along their labelled axes (several axes of one weight together: a Conv loses output and input
channels at once), a grouped Conv's weight is reindexed per group (each group may drop
different in-group columns as long as every group drops as many), a depthwise Conv's `group`
becomes its live channel count, Reshape/Expand shape entries become the live size (a constant
is replaced; a run-time Concat piece becomes a constant), and Split sizes are recounted. New
constants are created for everything changed (a weight may be shared). Shapes of intermediate
values are then inferred again; the graph's inputs and outputs are untouched (groups that reach
them are unprunable).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from compiler.ir import Graph, Node, Value, constant_value
from passes.pruning.groups import Analysis
from passes.pruning.trace import Edit

__all__ = ["apply_plan"]


def _set_const(graph: Graph, node: Node, i: int, array: np.ndarray, hint: str) -> Value:
    old = node.inputs[i] if i < len(node.inputs) else None
    new = graph.make_constant(array, hint)
    while len(node.inputs) <= i:
        node.append_input(None)
    node.set_input(i, new)
    if old is not None and not old.uses and not old.is_graph_output():
        if old.const is not None:
            graph.drop_if_unused(old)
        elif old.producer is not None and old.producer.op_type == "Constant" and \
                old.producer.graph is graph:
            graph.remove(old.producer)
    return new


def _grouped(w: np.ndarray, keep: np.ndarray, groups: int) -> np.ndarray:
    """A grouped Conv weight [O, C/g, ...] without the input channels `~keep` (length C)."""
    o = w.shape[0]
    per_in = keep.reshape(groups, -1)
    og = o // groups
    rows = [w[k * og:(k + 1) * og][:, per_in[k]] for k in range(groups)]
    return np.concatenate(rows, axis=0)


def _shape_entries(graph: Graph, node: Node, index: int, entries: dict[int, int]) -> None:
    sv = node.inputs[index]
    c = constant_value(sv)
    if c is not None:
        arr = np.array(c, copy=True).reshape(-1)
        for e, size in entries.items():
            if arr[e] != -1:
                arr[e] = size
        _set_const(graph, node, index, arr.astype(c.dtype).reshape(c.shape),
                   (node.name or node.op_type) + "/pruned_shape")
        return
    concat = sv.producer  # checked by the tracer: a Concat of pieces of static length
    if len(sv.uses) > 1 or sv.is_graph_output():  # others read the old sizes: use a copy
        clone = Node("Concat", list(concat.inputs), 1, name=graph.unique_name("pruned_concat"),
                     attrs=dict(concat.attrs))
        clone.outputs[0].name = graph.unique_name("pruned_shape")
        clone.outputs[0].dtype, clone.outputs[0].shape = sv.dtype, sv.shape
        graph.insert_before(node, clone)
        node.set_input(index, clone.outputs[0])
        concat = clone
    pos = 0
    for k, piece in enumerate(list(concat.inputs)):
        length = piece.static_shape()[0]
        mine = {e - pos: s for e, s in entries.items() if pos <= e < pos + length}
        if mine:
            pc = constant_value(piece)
            arr = np.array(pc, copy=True).reshape(-1) if pc is not None else \
                np.zeros(1, np.int64)
            for e, s in mine.items():
                if pc is None or arr[e] != -1:
                    arr[e] = s
            _set_const(graph, concat, k, arr.astype(np.int64),
                       (concat.name or "concat") + "/pruned_piece")
        pos += length


def apply_plan(analysis: Analysis, removed: set[int]) -> dict[str, int]:
    """Remove the units in `removed` from the analysed graph, in place. Returns counters."""
    graph = analysis.graph
    slices: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = defaultdict(list)
    nodes: dict[int, Node] = {}
    grouped: dict[int, tuple[np.ndarray, int]] = {}
    entries: dict[tuple[int, int], dict[int, int]] = defaultdict(dict)
    splits: list[tuple[Edit, np.ndarray]] = []
    stats = {"weights_sliced": 0, "shapes_rewritten": 0}
    for e in analysis.trace.edits:
        keep = analysis.keep_mask(e.label, removed)
        nodes[id(e.node)] = e.node
        if e.kind == "slice":
            if not keep.all():
                slices[(id(e.node), e.index)].append((e.axis, keep))
        elif e.kind == "grouped_in":
            if not keep.all():
                grouped[id(e.node)] = (keep, e.groups)
        elif e.kind == "conv_group":
            if not keep.all():
                e.node.set_attr("group", int(keep.sum()))
        elif e.kind == "shape_entry":
            if not keep.all():
                entries[(id(e.node), e.index)][e.axis] = int(keep.sum())
        elif e.kind == "split":
            if not keep.all():
                splits.append((e, keep))
    for (nid, i), cuts in slices.items():
        node = nodes[nid]
        arr = np.asarray(constant_value(node.inputs[i]))
        if i == 1 and nid in grouped and node.op_type == "Conv":
            keep, g = grouped.pop(nid)
            arr = _grouped(arr, keep, g)
        for axis, keep in cuts:
            if arr.shape[axis] == 1 and keep.size > 1:
                continue  # broadcast along the axis: nothing to cut
            arr = np.compress(keep, arr, axis=axis)
        _set_const(graph, node, i, np.ascontiguousarray(arr),
                   (node.name or node.op_type) + f"/pruned_{i}")
        stats["weights_sliced"] += 1
    for nid, (keep, g) in grouped.items():
        node = nodes[nid]
        arr = _grouped(np.asarray(constant_value(node.inputs[1])), keep, g)
        _set_const(graph, node, 1, arr, (node.name or "conv") + "/pruned_1")
        stats["weights_sliced"] += 1
    for (nid, i), ent in entries.items():
        _shape_entries(graph, nodes[nid], i, ent)
        stats["shapes_rewritten"] += 1
    for e, keep in splits:
        _split_sizes(graph, e, keep)
        stats["shapes_rewritten"] += 1
    _refresh_shapes(graph)
    return stats


def _split_sizes(graph: Graph, e: Edit, keep: np.ndarray) -> None:
    node = e.node
    sizes = node.attr("split")
    if sizes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
        sizes = [int(s) for s in constant_value(node.inputs[1])]
    n = len(node.outputs)
    if sizes is None:
        sizes = [-(-keep.size // n)] * (n - 1)
        sizes.append(keep.size - sum(sizes))
    new, start = [], 0
    for s in sizes:
        new.append(int(keep[start:start + s].sum()))
        start += s
    node.attrs.pop("num_outputs", None)
    if "split" in node.attrs or (node.version or 13) < 13:
        node.set_attr("split", new)
    else:
        _set_const(graph, node, 1, np.asarray(new, np.int64), (node.name or "split") + "/sizes")


def _refresh_shapes(graph: Graph) -> None:
    from passes.shape_inference import infer_shapes

    outs = {id(v) for v in graph.outputs}
    for node in graph:
        for o in node.outputs:
            if id(o) not in outs:
                o.shape = None
    infer_shapes(graph)
