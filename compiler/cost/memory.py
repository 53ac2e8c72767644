"""Peak memory of one inference: weights + the peak of live activations (liveness) + workspace.

Liveness over the execution order (the graph's node order, which is topological):

- every non-constant value gets a *buffer*; view ops (Reshape, Flatten, Squeeze, Unsqueeze,
  Identity, Dropout) do not allocate: their output shares its input's buffer, as in ONNX
  Runtime's and OpenVINO's in-place reuse;
- a buffer is live from the step of its producer (graph inputs: from step 0) to the last step
  that reads any alias of it (graph outputs: to the end);
- at step i the live set holds the inputs and outputs of node i together, so
  live(i) = sum of buffer bytes with start <= i <= end, and peak = max_i live(i);
- values internal to a fusion group (produced and only read inside one
  `meta["fusion_group"]["id"]`, not a graph output) are never materialised: 0 bytes, and the
  group's inputs and outputs are live together over the group's whole span (one kernel);
- constants (initializers, Constant nodes) are weights, counted once in `weight_bytes` at the
  byte width of their precision (int8 weights 1 byte, int4 half a byte, fp16 2 bytes).

This is the lower bound of an allocator that frees at last use and never fragments; real
runtimes add a per-backend multiplier and a fixed workspace, which `compiler.cost.model`
calibrates from measured peak RSS.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from compiler.cost.flops import numel
from compiler.ir import Graph, Node, Value

__all__ = ["ALIAS_OPS", "Liveness", "activation_liveness", "value_bytes", "weight_bytes",
           "weight_values"]

ALIAS_OPS = frozenset({"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"})
_SUBBYTE = {onnx.TensorProto.INT4: 0.5, onnx.TensorProto.UINT4: 0.5}


def _itemsize(dtype: int | None) -> float:
    if dtype is None or dtype == onnx.TensorProto.UNDEFINED:
        return 4.0
    if dtype in _SUBBYTE:
        return _SUBBYTE[dtype]
    try:
        return float(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(dtype)).itemsize)
    except Exception:  # strings and other exotic types: a pointer each
        return 8.0


def value_bytes(v: Value, bindings: Mapping[str, int] | None = None) -> float:
    """Bytes of one tensor at its own element type (4 when the type is unknown)."""
    if v.const is not None:
        return float(v.const.nbytes)
    return numel(v, bindings) * _itemsize(v.dtype)


def weight_values(graph: Graph) -> list[Value]:
    """Initializers that are read (not graph inputs) and Constant-node outputs."""
    inputs = {id(v) for v in graph.inputs}
    out = [v for v in graph.initializers.values() if id(v) not in inputs and v.uses]
    for n in graph:
        if n.op_type == "Constant" and n.outputs:
            out.append(n.outputs[0])
    return out


def weight_bytes(graph: Graph, width: Callable[[Value], float | None] | None = None,
                 bindings: Mapping[str, int] | None = None) -> float:
    """Total weight bytes; `width(value)` may override the bytes per element (precision)."""
    total = 0.0
    for v in weight_values(graph):
        w = width(v) if width is not None else None
        if w is None:
            total += value_bytes(v, bindings) if v.const is not None else \
                numel(v, bindings) * _itemsize(v.dtype)
        else:
            total += (v.const.size if v.const is not None else numel(v, bindings)) * w
    return total


def _is_weight(v: Value) -> bool:
    return v.const is not None or (v.producer is not None and v.producer.op_type == "Constant")


@dataclass
class Liveness:
    """The result of `activation_liveness`: bytes live at each step and the peak."""

    peak_bytes: float
    peak_step: int
    live_bytes: list[float]
    peak_node: str

    def to_dict(self) -> dict:
        return {"peak_bytes": self.peak_bytes, "peak_step": self.peak_step,
                "peak_node": self.peak_node}


def _group(n: Node | None) -> str | None:
    if n is None:
        return None
    g = n.meta.get("fusion_group")
    return str(g["id"]) if isinstance(g, Mapping) and "id" in g else None


def _internal(v: Value) -> bool:
    """True when `v` lives only inside one fusion group."""
    gid = _group(v.producer)
    if gid is None or v.is_graph_output() or not v.uses:
        return False
    return all(_group(n) == gid for n, _ in v.uses)


def activation_liveness(graph: Graph, bindings: Mapping[str, int] | None = None, *,
                        include_inputs: bool = True, fused: bool = True) -> Liveness:
    """Peak bytes of simultaneously live activations over the graph's node order."""
    nodes = list(graph)
    n_steps = max(len(nodes), 1)
    root: dict[int, int] = {}  # id(value) -> buffer index
    start: list[int] = []
    end: list[int] = []
    size: list[float] = []

    def new_buffer(v: Value, step: int, nbytes: float) -> None:
        root[id(v)] = len(size)
        start.append(step)
        end.append(step)
        size.append(nbytes)

    if include_inputs:
        for v in graph.inputs:
            if v.const is None:
                new_buffer(v, 0, value_bytes(v, bindings))
    span: dict[str, tuple[int, int]] = {}  # a fusion group runs as one step: its whole span
    for i, n in enumerate(nodes):
        gid = _group(n) if fused else None
        if gid is not None:
            span[gid] = (span.get(gid, (i, i))[0], i)
    for i, n in enumerate(nodes):
        if n.op_type == "Constant":
            continue
        gid = _group(n) if fused else None
        first, last = span[gid] if gid is not None else (i, i)
        for v in n.inputs:
            if v is not None and id(v) in root:
                end[root[id(v)]] = max(end[root[id(v)]], last)
        src = n.inputs[0] if n.inputs else None
        for k, o in enumerate(n.outputs):
            if not o.name:
                continue
            if k == 0 and n.op_type in ALIAS_OPS and src is not None and id(src) in root:
                root[id(o)] = root[id(src)]
                continue
            nbytes = 0.0 if (fused and _internal(o)) else value_bytes(o, bindings)
            new_buffer(o, first, nbytes)
    for v in graph.outputs:
        if id(v) in root:
            end[root[id(v)]] = n_steps - 1
    delta = [0.0] * (n_steps + 1)  # a difference array keeps this linear in the graph size
    for s, e, b in zip(start, end, size):
        delta[s] += b
        delta[e + 1] -= b
    live, acc = [], 0.0
    for i in range(n_steps):
        acc += delta[i]
        live.append(acc)
    peak_step = max(range(n_steps), key=lambda i: (live[i], -i))
    peak_node = nodes[peak_step].name or nodes[peak_step].op_type if nodes else ""
    return Liveness(live[peak_step], peak_step, live, peak_node)
