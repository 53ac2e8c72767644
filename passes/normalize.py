"""Import normalization: make a model from any exporter look the way edgec's passes expect.

Exporters write the same computation in different forms; passes, the cost model and `edgec
inspect` read one form. This pass runs when a model is loaded (`compiler.driver.load_graph`,
so compile, optimize, inspect and the search all see it) and is registered as `normalize` for
pipelines. It keeps the function the graph computes, bit for bit:

1. **Dims.** A graph input's dim without a name (an empty dim, or paddle2onnx's `-1`, which
   the importer reads as unknown) gets a symbol of its own, `<input>_d<axis>`, unique in the
   model. Binding one dim (`shapes=`) then binds that dim only, and shape inference can relate
   the dims downstream to it instead of losing them.
2. **Constant nodes become initializers** (paddle2onnx, spox and older torch exporters hold
   every weight in a `Constant`): parameters are counted, and precision lowering, the cost
   model and fusion rules that look for initializers see the weights. A Constant whose output
   is a graph output stays (the interface keeps its producer); sparse and string constants
   stay too.
3. **Shapes propagate** through shape arithmetic (Shape -> Gather -> Concat -> Reshape, Expand,
   Slice with computed bounds): shape inference with ONNX's data propagation, then ONNX
   Runtime's symbolic inference where ONNX gives up (passes/shape_inference.py). What stays
   unknown is left unknown; the cost model reports it in its assumptions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from compiler.ir import Graph, Node, Value, constant_node_value
from compiler.tensor import Tensor
from passes.base import Pass, PassConfig, PassContext, PassResult, register_pass
from passes.shape_inference import infer_shapes

__all__ = ["Normalize", "normalize", "name_unknown_dims", "constants_to_initializers"]


@dataclass(frozen=True)
class NormalizeConfig(PassConfig):
    infer: bool = True  # propagate shapes after the rewrite


def _symbols(graph: Graph) -> set[str]:
    return {d for g in _graphs(graph) for v in g.values() if v.shape
            for d in v.shape if isinstance(d, str)}


def _graphs(graph: Graph):
    yield graph
    for n in graph.all_nodes():
        yield from n.subgraphs()


def name_unknown_dims(graph: Graph) -> int:
    """Give each unnamed dim of a graph input its own symbol; returns how many were named."""
    used = _symbols(graph)
    named = 0
    for v in graph.inputs:
        if v.const is not None or not v.shape or all(d is not None for d in v.shape):
            continue
        base = re.sub(r"\W", "_", v.name) or "input"
        dims = list(v.shape)
        for i, d in enumerate(dims):
            if d is not None:
                continue
            sym, k = f"{base}_d{i}", 1
            while sym in used:
                sym, k = f"{base}_d{i}_{k}", k + 1
            used.add(sym)
            dims[i] = sym
            named += 1
        v.shape = tuple(dims)
    return named


def _constant_tensor(node: Node, name: str) -> Tensor | None:
    attr = node.attrs.get("value")
    if attr is not None and isinstance(attr.value, Tensor):
        t = attr.value
        if t.is_sparse or t.dtype == 8:  # onnx.TensorProto.STRING
            return None
        return t
    if attr is None and any(k in node.attrs for k in ("sparse_value", "value_string",
                                                       "value_strings")):
        return None
    arr = constant_node_value(node)
    return None if arr is None else Tensor.from_numpy(np.asarray(arr), name)


def constants_to_initializers(graph: Graph) -> int:
    """Turn standard Constant nodes into initializers of their graph; returns how many."""
    moved = 0
    for g in list(_graphs(graph)):
        for node in g.nodes:
            if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
                continue
            out = node.outputs[0]
            if out.is_graph_output() or not out.name:
                continue
            tensor = _constant_tensor(node, out.name)
            if tensor is None:
                continue
            v = Value(out.name, tensor.dtype, tensor.dims, const=tensor)
            v.doc_string = out.doc_string
            out.replace_all_uses_with(v, outputs=False)
            g.remove(node)
            g.add_initializer(v)
            moved += 1
    return moved


def normalize(graph: Graph, infer: bool = True) -> dict[str, int]:
    """Apply the normalization to `graph` in place; returns what it changed."""
    stats = {"dims_named": name_unknown_dims(graph),
             "constants_to_initializers": constants_to_initializers(graph)}
    if infer and (stats["dims_named"] or stats["constants_to_initializers"]):
        infer_shapes(graph)
    return stats


@register_pass
class Normalize(Pass):
    """Name unknown input dims, lift Constant nodes into initializers, propagate shapes."""

    name = "normalize"
    Config = NormalizeConfig

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        stats = normalize(graph, self.config.infer)
        return PassResult(any(stats.values()), stats)
