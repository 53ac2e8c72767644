"""Identity and no-op elimination.

Removes nodes whose output equals their first input, element for element:

- Identity; Dropout at inference (ratio ignored, mask unused);
- Cast to the element type the input already has;
- Reshape / Expand / Flatten / Squeeze / Unsqueeze whose output shape equals the input shape
  (both known and static);
- Transpose with the identity permutation; Pad with all-zero pads; Slice taking everything;
- Add/Sub of a constant zero and Mul/Div by a constant one, when broadcasting does not change
  the shape or dtype (x + 0 = x, x * 1 = x exactly in IEEE arithmetic, except that -0 + 0 = +0:
  Add-zero is therefore only removed when the constant is -0.0 or the check is disabled).

A removed node's output takes over its graph-output name when needed, so the model's interface
is unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from compiler.ir import Graph, Node, Value, constant_value
from passes.base import Pass, PassConfig, PassContext, PassResult, register_pass

__all__ = ["IdentityElimination", "is_noop"]


@dataclass(frozen=True)
class IdentityConfig(PassConfig):
    arithmetic: bool = True  # also remove x*1, x/1, x-0 (and x+(-0))


def _const(v: Value | None) -> np.ndarray | None:
    """A small compile-time constant (large ones are never no-op operands)."""
    if v is not None and v.const is not None and v.const.size > 4096:
        return None
    return constant_value(v)


def _same_shape(a: Value, b: Value) -> bool:
    sa, sb = a.static_shape(), b.static_shape()
    return sa is not None and sa == sb and a.dtype is not None and a.dtype == b.dtype


def is_noop(node: Node, arithmetic: bool = True) -> bool:
    """Whether `node`'s first output is exactly its first input."""
    op = node.op_type
    if node.domain or not node.inputs or node.inputs[0] is None:
        return False
    x, y = node.inputs[0], node.outputs[0]
    if op == "Identity":
        return True
    if op == "Dropout":
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            training = _const(node.inputs[2])
            if training is None or training.any():
                return False
        mask = node.outputs[1] if len(node.outputs) > 1 else None
        return mask is None or not (mask.uses or mask.is_graph_output())
    if op == "Cast":
        return x.dtype is not None and x.dtype == node.attr("to")
    if op in ("Reshape", "Expand", "Flatten", "Squeeze", "Unsqueeze"):
        return _same_shape(x, y)
    if op == "Transpose":
        perm = node.attr("perm")
        return perm is not None and list(perm) == list(range(len(perm)))
    if op == "Pad":
        pads = _const(node.inputs[1]) if len(node.inputs) > 1 else None
        if pads is None and node.attr("pads") is not None:
            pads = np.asarray(node.attr("pads"))
        return pads is not None and not pads.any() and _same_shape(x, y)
    if op == "Slice":  # same shape and unit steps: it takes everything
        steps = node.inputs[4] if len(node.inputs) > 4 else None
        if steps is not None:
            s = _const(steps)
            if s is None or not np.all(s == 1):
                return False
        return _same_shape(x, y)
    if arithmetic and op in ("Add", "Sub", "Mul", "Div") and len(node.inputs) == 2:
        c = _const(node.inputs[1])
        if c is None or not _same_shape(x, y):
            return False
        if op == "Mul" or op == "Div":
            return bool(np.all(c == 1))
        if op == "Sub":  # x - (+0) == x for every x; x - (-0) turns -0 into +0
            return bool(np.all((c == 0) & ~np.signbit(c)))
        return bool(np.all((c == 0) & np.signbit(c)))  # only -0.0 keeps x + c == x for x = -0
    return False


@register_pass
class IdentityElimination(Pass):
    """Remove nodes that copy their input (see module docstring for the list)."""

    name = "identity_elimination"
    Config = IdentityConfig

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        removed = self._run(graph)
        return PassResult(removed > 0, {"nodes_removed": removed})

    def _run(self, graph: Graph) -> int:
        removed = 0
        for node in graph.nodes:
            for sg in node.subgraphs():
                removed += self._run(sg)
            if not is_noop(node, self.config.arithmetic):
                continue
            if graph.bypass(node.outputs[0], node.inputs[0]):
                if not any(o.uses or o.is_graph_output() for o in node.outputs):
                    graph.remove(node)
                    removed += 1
        return removed
