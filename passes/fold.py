"""Constant folding: evaluate nodes whose inputs are all constants, once, at compile time.

A value is constant when it is an initializer that is not also a graph input (those can be
overridden at run time), or the output of a `Constant` node, or the `Shape`/`Size` of a value
whose shape is static. A node with only constant inputs is evaluated with ONNX's reference
implementation and its outputs become initializers. Folding is refused when it would grow the
model (an output larger than `max_elements` and larger than all inputs together, as with
Expand/Tile of a scalar; for ops whose output shape is an input's data, such as
ConstantOfShape and Range, the size is computed from those data before evaluating), for
nondeterministic ops, for nodes with subgraphs, and for
QuantizeLinear/DequantizeLinear, whose presence in the graph *is* the precision assignment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx

from compiler.ir import Graph, Node, constant_node_value, constant_value, is_constant
from compiler.onnx_io import node_to_proto
from passes.base import Pass, PassConfig, PassContext, PassResult, register_pass

__all__ = ["ConstantFolding", "fold_node"]

_NEVER = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
          "Multinomial", "Bernoulli", "QuantizeLinear", "DequantizeLinear",
          "DynamicQuantizeLinear", "If", "Loop", "Scan", "SequenceConstruct"}


@dataclass(frozen=True)
class FoldConfig(PassConfig):
    max_elements: int = 1 << 20


def fold_node(node: Node) -> list[np.ndarray] | None:
    """Evaluate `node` on its constant inputs with ONNX's reference implementation."""
    from onnx.reference import ReferenceEvaluator

    if node.op_type == "Constant" and not node.domain:
        c = constant_node_value(node)
        return None if c is None else [c]
    inputs, feeds, init = [], {}, []
    for i, v in enumerate(node.inputs):
        if v is None:
            inputs.append("")
            continue
        name = f"in{i}"
        inputs.append(name)
        init.append(onnx.numpy_helper.from_array(constant_value(v), name))
    outs = [f"out{i}" for i in range(len(node.outputs))]
    np_ = node_to_proto(node)
    del np_.input[:], np_.output[:]
    np_.input.extend(inputs)
    np_.output.extend(outs)
    gp = onnx.helper.make_graph([np_], "fold", [], [onnx.ValueInfoProto(name=o) for o in outs],
                                init)
    opset = node.graph.root.opset_imports if node.graph is not None else {"": 17}
    model = onnx.helper.make_model(
        gp, opset_imports=[onnx.helper.make_opsetid(d, v) for d, v in opset.items()])
    try:
        res = ReferenceEvaluator(model).run(None, feeds)
    except Exception:
        return None
    return [np.asarray(r) for r in res]


def _made_elements(op_type: str, arrays: list[np.ndarray]) -> int | None:
    """Elements of the output of an op whose output shape is given by its input *values*
    (ConstantOfShape, Expand, Tile, Range), computed before the op runs: a model that asks for
    a tensor of 2^62 elements is not folded (the limit check), instead of exhausting memory."""
    try:
        if op_type == "ConstantOfShape":
            return math.prod(max(int(d), 0) for d in arrays[0].ravel())
        if op_type == "Expand" and len(arrays) == 2:
            a, b = list(arrays[0].shape), [int(d) for d in arrays[1].ravel()]
            n = max(len(a), len(b))
            a, b = [1] * (n - len(a)) + a, [1] * (n - len(b)) + b
            return math.prod(max(x, y, 0) for x, y in zip(a, b))
        if op_type == "Tile" and len(arrays) == 2:
            return arrays[0].size * math.prod(max(int(r), 0) for r in arrays[1].ravel())
        if op_type == "Range" and len(arrays) == 3:
            start, stop, step = (float(a.ravel()[0]) for a in arrays)
            if step == 0 or not all(math.isfinite(x) for x in (start, stop, step)):
                return 1 << 62  # ONNX's reference would loop forever or fail: never fold
            return max(math.ceil((stop - start) / step), 0)
    except (IndexError, ValueError, OverflowError):
        return 1 << 62
    return None


@register_pass
class ConstantFolding(Pass):
    """Replace constant subexpressions by initializers (see module docstring)."""

    name = "constant_folding"
    Config = FoldConfig

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        folded = self._run(graph)
        return PassResult(folded > 0, {"nodes_folded": folded})

    def _run(self, graph: Graph) -> int:
        folded = 0
        for node in graph.nodes:
            for sg in node.subgraphs():
                folded += self._run(sg)
            results = self._evaluate(node)
            if results is None:
                continue
            if self._replace(graph, node, results):
                folded += 1
        return folded

    def _evaluate(self, node: Node) -> list[np.ndarray] | None:
        if node.op_type in _NEVER or node.domain not in ("", "ai.onnx") or any(
                True for _ in node.subgraphs()):
            return None
        if node.op_type in ("Shape", "Size") and node.inputs[0] is not None:
            shape = node.inputs[0].static_shape()
            if shape is None:
                return None
            if node.op_type == "Size":
                return [np.asarray(int(np.prod(shape)), dtype=np.int64)]
            start, end = node.attr("start", 0), node.attr("end", None)
            return [np.asarray(shape[start:end], dtype=np.int64)]
        if node.op_type != "Constant" and (not node.inputs or not all(
                v is None or is_constant(v) for v in node.inputs)):
            return None
        arrays = [constant_value(v) for v in node.inputs if v is not None]
        if any(a is None for a in arrays):  # a Constant it cannot read (strings, sparse)
            return None
        in_size = sum(a.size for a in arrays)
        limit = max(self.config.max_elements, in_size)
        for o in node.outputs:  # refuse before computing a huge result
            shape = o.static_shape()
            if shape is not None and node.op_type != "Constant" and \
                    math.prod(int(d) for d in shape) > limit:
                return None
        if (_made_elements(node.op_type, arrays) or 0) > limit:  # its shape is the input's data
            return None
        results = fold_node(node)
        if results is None:
            return None
        if node.op_type != "Constant" and any(r.size > limit for r in results):
            return None
        return results

    def _replace(self, graph: Graph, node: Node, results: list[np.ndarray]) -> bool:
        """Point readers of `node`'s outputs at new initializers; True if anything changed.

        Graph outputs keep being produced by the node, so the model's interface is unchanged.
        """
        changed = False
        for out, arr in zip(node.outputs, results):
            if not out.name or not out.uses or out.is_graph_output():
                continue
            if out.dtype is not None:
                arr = arr.astype(onnx.helper.tensor_dtype_to_np_dtype(out.dtype), copy=False)
            const = graph.make_constant(arr, out.name)
            out.replace_all_uses_with(const, outputs=False)
            changed = True
        if not any(o.uses or o.is_graph_output() for o in node.outputs):
            graph.remove(node)
            return True
        return changed
