"""Graph IR: values with use-def links, nodes in a linked list, lazy weights.

A `Graph` owns an ordered, doubly linked list of `Node`s (O(1) insert and remove, so passes stay
linear on 100k-node graphs), its inputs, outputs and initializers. A `Value` knows the node that
produces it (`producer`, `index`) and every `(node, input_index)` that uses it. Mutation goes
through methods that keep those links exact: `Node.set_input`, `Value.replace_all_uses_with`,
`Graph.insert_before/after`, and `Graph.remove`, which refuses while an output is still used.

Weights are `Tensor`s (compiler.tensor) that decode lazily: inline ONNX data stays in its
TensorProto until `numpy()` is called, external data is memory-mapped from the model's folder
on first read, and unchanged tensors are written back from their original bytes.

A dim is an `int`, a `str` (symbolic, e.g. "batch") or `None` (unknown).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from compiler.errors import InvalidModelError
from compiler.tensor import ExternalRef, Tensor, dtype_to_numpy, safe_join  # noqa: F401

__all__ = [
    "constant_node_value",
    "constant_value",
    "is_constant",
    "Dim",
    "Tensor",
    "ExternalRef",
    "Value",
    "Attr",
    "Node",
    "Graph",
    "ModelInfo",
    "dtype_to_numpy",
]

Dim = int | str | None


@dataclass
class Attr:
    """A node attribute: its ONNX type and a Python value (Graph for GRAPH attributes)."""

    name: str
    type: int
    value: Any
    doc_string: str = ""
    ref_attr_name: str = ""


class Value:
    """A tensor flowing in the graph: one producer (or none: input/initializer), many uses."""

    __slots__ = ("name", "dtype", "shape", "type_proto", "producer", "index", "uses",
                 "const", "doc_string", "metadata_props", "graph")

    def __init__(self, name: str, dtype: int | None = None,
                 shape: tuple[Dim, ...] | None = None, *, const: Tensor | None = None) -> None:
        self.name = name
        self.dtype = dtype
        self.shape = tuple(shape) if shape is not None else None
        self.type_proto: onnx.TypeProto | None = None  # non-tensor types (sequence, optional)
        self.producer: Node | None = None
        self.index = 0
        self.uses: list[tuple[Node, int]] = []
        self.const = const
        self.doc_string = ""
        self.metadata_props: dict[str, str] = {}
        self.graph: Graph | None = None

    @property
    def is_const(self) -> bool:
        return self.const is not None

    @property
    def rank(self) -> int | None:
        return None if self.shape is None else len(self.shape)

    def consumers(self) -> list[Node]:
        seen: dict[int, Node] = {}
        for n, _ in self.uses:
            seen.setdefault(id(n), n)
        return list(seen.values())

    def is_graph_output(self) -> bool:
        return self.graph is not None and any(o is self for o in self.graph.outputs)

    def replace_all_uses_with(self, other: Value, *, outputs: bool = True) -> None:
        """Point every use (and, if `outputs`, graph outputs) at `other`."""
        if other is self:
            return
        for node, i in list(self.uses):
            node.set_input(i, other)
        if outputs and self.graph is not None:
            outs = self.graph.outputs
            for k, o in enumerate(outs):
                if o is self:
                    outs[k] = other

    def static_shape(self) -> tuple[int, ...] | None:
        if self.shape is None or any(not isinstance(d, int) for d in self.shape):
            return None
        return tuple(self.shape)  # type: ignore[arg-type]

    def __repr__(self) -> str:
        return f"Value({self.name!r}, shape={self.shape})"


class Node:
    """An operator application. `meta` holds edgec annotations (precision, fusion group, cost)."""

    __slots__ = ("op_type", "domain", "name", "inputs", "outputs", "attrs", "doc_string",
                 "metadata_props", "meta", "graph", "overload", "_prev", "_next")

    def __init__(self, op_type: str, inputs: Iterable[Value | None] = (),
                 outputs: Iterable[Value] | int = 1, *, domain: str = "", name: str = "",
                 attrs: dict[str, Attr] | None = None, overload: str = "") -> None:
        self.op_type = op_type
        self.domain = "" if domain == "ai.onnx" else domain
        self.name = name
        self.overload = overload
        self.attrs: dict[str, Attr] = dict(attrs or {})
        self.doc_string = ""
        self.metadata_props: dict[str, str] = {}
        self.meta: dict[str, Any] = {}
        self.graph: Graph | None = None
        self._prev: Node | None = None
        self._next: Node | None = None
        self.inputs: list[Value | None] = []
        for v in inputs:
            self.inputs.append(v)
            if v is not None:
                v.uses.append((self, len(self.inputs) - 1))
        if isinstance(outputs, int):
            base = name or op_type
            outputs = [Value(f"{base}_out{i}") for i in range(outputs)]
        self.outputs: list[Value] = list(outputs)
        for i, v in enumerate(self.outputs):
            v.producer, v.index = self, i

    # -- attributes --------------------------------------------------------------------------
    def attr(self, name: str, default: Any = None) -> Any:
        a = self.attrs.get(name)
        return default if a is None else a.value

    def set_attr(self, name: str, value: Any, type: int | None = None) -> None:
        if type is None:
            type = onnx.helper.make_attribute(name, value).type if not isinstance(
                value, Graph) else onnx.AttributeProto.GRAPH
        self.attrs[name] = Attr(name, type, value)

    # -- inputs --------------------------------------------------------------------------------
    def set_input(self, i: int, value: Value | None) -> None:
        old = self.inputs[i]
        if old is value:
            return
        if old is not None:
            old.uses.remove((self, i))
        self.inputs[i] = value
        if value is not None:
            value.uses.append((self, i))

    def append_input(self, value: Value | None) -> None:
        self.inputs.append(None)
        self.set_input(len(self.inputs) - 1, value)

    def drop_inputs(self) -> None:
        for i in range(len(self.inputs)):
            self.set_input(i, None)

    @property
    def version(self) -> int | None:
        """The opset version of this node's domain in the enclosing model."""
        g = self.graph
        if g is None:
            return None
        return g.root.opset_imports.get(self.domain or "")

    def subgraphs(self) -> Iterator[Graph]:
        for a in self.attrs.values():
            if isinstance(a.value, Graph):
                yield a.value
            elif isinstance(a.value, list):
                yield from (g for g in a.value if isinstance(g, Graph))

    def __repr__(self) -> str:
        return f"Node({self.op_type}, {self.name!r})"


@dataclass
class ModelInfo:
    """Model-level fields of an ONNX ModelProto, preserved across a round trip."""

    ir_version: int = onnx.IR_VERSION
    producer_name: str = "edgec"
    producer_version: str = ""
    domain: str = ""
    model_version: int = 0
    doc_string: str = ""
    metadata_props: dict[str, str] = field(default_factory=dict)
    functions: list[onnx.FunctionProto] = field(default_factory=list)
    training_info: list[onnx.TrainingInfoProto] = field(default_factory=list)
    base_dir: str | None = None  # the model's folder, for external data


class Graph:
    """A (sub)graph. The root graph also carries `opset_imports` and `model` info."""

    def __init__(self, name: str = "graph", *, parent: Graph | None = None) -> None:
        self.name = name
        self.parent = parent
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.initializers: dict[str, Value] = {}
        self.doc_string = ""
        self.metadata_props: dict[str, str] = {}
        self.quantization_annotation: list[onnx.TensorAnnotation] = []  # kept for round trips
        self.opset_imports: dict[str, int] = {}
        self.model = ModelInfo()
        self._head: Node | None = None
        self._tail: Node | None = None
        self._count = 0
        self._names = itertools.count()

    # -- structure -----------------------------------------------------------------------------
    @property
    def root(self) -> Graph:
        g = self
        while g.parent is not None:
            g = g.parent
        return g

    def __iter__(self) -> Iterator[Node]:
        n = self._head
        while n is not None:
            nxt = n._next
            yield n
            n = nxt

    def __len__(self) -> int:
        return self._count

    @property
    def nodes(self) -> list[Node]:
        return list(self)

    def all_nodes(self) -> Iterator[Node]:
        """Nodes of this graph and, recursively, of every subgraph."""
        for n in self:
            yield n
            for sg in n.subgraphs():
                yield from sg.all_nodes()

    def unique_name(self, hint: str) -> str:
        """A value name not used anywhere in the model (including subgraphs)."""
        root = self.root
        used = root.__dict__.get("_used_names")
        if used is None:
            used = root._used_names = {v.name for g in _graphs(root) for v in g.values()}
        while True:
            name = f"{hint}__{next(root._names)}"
            if name not in used:
                used.add(name)
                return name

    # -- values --------------------------------------------------------------------------------
    def add_input(self, value: Value) -> Value:
        value.graph = self
        self.inputs.append(value)
        return value

    def add_initializer(self, value: Value) -> Value:
        if value.const is None:
            raise ValueError("an initializer needs a const tensor")
        other = self.initializers.get(value.name)
        if other is not None and other is not value:
            raise ValueError(f"graph {self.name!r} already has an initializer {value.name!r}")
        value.graph = self
        value.const.name = value.name
        self.initializers[value.name] = value
        return value

    def make_constant(self, array: np.ndarray, hint: str = "const") -> Value:
        """A new initializer holding `array`."""
        name = self.unique_name(hint)
        t = Tensor.from_numpy(np.asarray(array), name)
        v = Value(name, t.dtype, t.dims, const=t)
        return self.add_initializer(v)

    def values(self) -> Iterator[Value]:
        """Every value defined in this graph (inputs, initializers, node outputs)."""
        yield from self.inputs
        for v in self.initializers.values():
            if not any(v is i for i in self.inputs):
                yield v
        for n in self:
            yield from n.outputs

    # -- mutation -----------------------------------------------------------------------------
    def _link(self, node: Node, prev: Node | None, nxt: Node | None) -> None:
        if node.graph is not None:
            raise ValueError(f"{node!r} already belongs to a graph")
        node.graph = self
        for o in node.outputs:
            o.graph = self
        node._prev, node._next = prev, nxt
        if prev is None:
            self._head = node
        else:
            prev._next = node
        if nxt is None:
            self._tail = node
        else:
            nxt._prev = node
        self._count += 1
        for sg in node.subgraphs():
            sg.parent = self

    def append(self, node: Node) -> Node:
        self._link(node, self._tail, None)
        return node

    def extend(self, nodes: Iterable[Node]) -> None:
        for n in nodes:
            self.append(n)

    def insert_before(self, anchor: Node, nodes: Node | Iterable[Node]) -> None:
        for n in [nodes] if isinstance(nodes, Node) else list(nodes):
            self._link(n, anchor._prev, anchor)

    def insert_after(self, anchor: Node, nodes: Node | Iterable[Node]) -> None:
        prev = anchor
        for n in [nodes] if isinstance(nodes, Node) else list(nodes):
            self._link(n, prev, prev._next)
            prev = n

    def remove(self, node: Node, *, force: bool = False) -> None:
        """Unlink `node` and drop its input uses. Refuses while an output is still used."""
        if node.graph is not self:
            raise ValueError(f"{node!r} is not in graph {self.name!r}")
        if not force:
            for o in node.outputs:
                if o.uses or o.is_graph_output():
                    raise ValueError(
                        f"cannot remove {node!r}: output {o.name!r} is still used")
        node.drop_inputs()
        for sg in node.subgraphs():  # captured outer values lose these readers too
            for inner in sg.all_nodes():
                inner.drop_inputs()
        if node._prev is None:
            self._head = node._next
        else:
            node._prev._next = node._next
        if node._next is None:
            self._tail = node._prev
        else:
            node._next._prev = node._prev
        node._prev = node._next = None
        node.graph = None
        self._count -= 1

    def bypass(self, old: Value, new: Value) -> bool:
        """Make every reader of `old` read `new` instead; graph outputs keep their names.

        When `old` is a graph output, `new` takes over its name, which is only possible if `new`
        is a node output of this graph that is not itself visible (input, initializer, output).
        Returns False, changing nothing, when that is impossible.
        """
        if old is new:
            return False
        if old.is_graph_output():
            visible = (new.producer is None or new.graph is not self or new.is_graph_output()
                       or any(v is new for v in self.inputs))
            if visible:
                return False
            new.name, old.name = old.name, self.unique_name(old.name + "_bypassed")
        old.replace_all_uses_with(new)
        return True

    def swap_contents(self, other: Graph) -> None:
        """Take over `other`'s nodes, inputs, outputs, initializers and opsets, in place.

        Callers holding this Graph keep a valid reference; model-level info is kept. `other`
        is left empty.
        """
        self.inputs, self.outputs, self.initializers = other.inputs, other.outputs, \
            other.initializers
        self._head, self._tail, self._count = other._head, other._tail, other._count
        self.quantization_annotation = other.quantization_annotation
        if other.opset_imports:
            self.opset_imports = dict(other.opset_imports)
        for v in itertools.chain(self.inputs, self.initializers.values()):
            v.graph = self
        for n in self:
            n.graph = self
            for o in n.outputs:
                o.graph = self
            for sg in n.subgraphs():
                sg.parent = self
        other.inputs, other.outputs, other.initializers = [], [], {}
        other._head = other._tail = None
        other._count = 0

    def drop_if_unused(self, v: Value | None) -> None:
        """Delete initializer `v` when nothing reads it and it is not a graph input/output."""
        if v is not None and v.const is not None and not v.uses and not v.is_graph_output() \
                and self.initializers.get(v.name) is v and not any(x is v for x in self.inputs):
            del self.initializers[v.name]

    def remove_unused_initializers(self) -> int:
        input_ids = {id(v) for v in self.inputs}
        dead = [k for k, v in self.initializers.items()
                if not v.uses and id(v) not in input_ids and not v.is_graph_output()]
        for k in dead:
            del self.initializers[k]
        return len(dead)

    # -- ordering ------------------------------------------------------------------------------
    def topological_sort(self) -> None:
        """Reorder nodes so every producer precedes its users; raises on a cycle.

        Stable: an already sorted graph keeps its order, and otherwise nodes keep their
        relative order wherever dependencies allow (Kahn's algorithm on a min-heap).
        """
        import heapq

        nodes = list(self)
        index = {id(n): i for i, n in enumerate(nodes)}
        indeg = [0] * len(nodes)
        succ: list[list[int]] = [[] for _ in nodes]
        in_order = True
        for i, n in enumerate(nodes):
            deps = set()
            for v in _free_inputs(n):
                p = v.producer
                if p is not None and id(p) in index and p.graph is self:
                    deps.add(index[id(p)])
            for d in deps:
                succ[d].append(i)
                in_order = in_order and d < i
            indeg[i] = len(deps)
        if in_order:
            return
        ready = [i for i in range(len(nodes)) if indeg[i] == 0]
        heapq.heapify(ready)
        order: list[int] = []
        while ready:
            i = heapq.heappop(ready)
            order.append(i)
            for j in succ[i]:
                indeg[j] -= 1
                if indeg[j] == 0:
                    heapq.heappush(ready, j)
        if len(order) != len(nodes):
            stuck = [nodes[i] for i in range(len(nodes)) if indeg[i] > 0]
            names = ", ".join(n.name or n.op_type for n in stuck[:5])
            raise InvalidModelError(
                f"the graph {self.name!r} has a cycle through {len(stuck)} nodes "
                f"(e.g. {names}); ONNX graphs must be acyclic")
        self._head = self._tail = None
        prev = None
        for i in order:
            n = nodes[i]
            n._prev, n._next = prev, None
            if prev is None:
                self._head = n
            else:
                prev._next = n
            prev = n
        self._tail = prev

    def to_networkx(self):  # -> networkx.MultiDiGraph
        """A networkx view (nodes are Node objects, edges carry the Value) for algorithms."""
        import networkx as nx

        g = nx.MultiDiGraph()
        for n in self:
            g.add_node(n)
        for n in self:
            for v in _free_inputs(n):
                if v.producer is not None and v.producer.graph is self:
                    g.add_edge(v.producer, n, value=v)
        return g

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self)} nodes)"


def _graphs(graph: Graph) -> Iterator[Graph]:
    """`graph` and every graph nested in it."""
    yield graph
    for n in graph:
        for sg in n.subgraphs():
            yield from _graphs(sg)


def _free_inputs(node: Node) -> Iterator[Value]:
    """Inputs of `node`, plus values its subgraphs capture from enclosing scopes."""
    for v in node.inputs:
        if v is not None:
            yield v
    for sg in node.subgraphs():
        yield from _captured(sg)


def _captured(graph: Graph) -> Iterator[Value]:
    for n in graph:
        for v in _free_inputs(n):
            if v.graph is not graph and v.graph is not None and _is_outer(v.graph, graph):
                yield v


def _is_outer(candidate: Graph, inner: Graph) -> bool:
    g = inner.parent
    while g is not None:
        if g is candidate:
            return True
        g = g.parent
    return False


def constant_node_value(node: Node) -> np.ndarray | None:
    """The value of a standard `Constant` node, whichever attribute holds it."""
    for key, attr in node.attrs.items():
        val = attr.value
        if key == "value":
            return np.asarray(val.numpy())
        if key in ("value_float", "value_floats"):
            return np.asarray(val, dtype=np.float32)
        if key in ("value_int", "value_ints"):
            return np.asarray(val, dtype=np.int64)
    return None


def is_constant(v: Value | None) -> bool:
    """Whether `v` is known at compile time: an initializer that is not also a graph input
    (those can be overridden at run time), or a Constant node's output. Reads no data."""
    if v is None:
        return False
    if v.const is not None:
        return v.graph is None or not any(i is v for i in v.graph.inputs)
    p = v.producer
    return p is not None and p.op_type == "Constant" and not p.domain


def constant_value(v: Value | None) -> np.ndarray | None:
    """The data of `v` when `is_constant(v)`, else None (external weights stay mapped)."""
    if not is_constant(v):
        return None
    if v.const is not None:
        return np.asarray(v.const.numpy())
    return constant_node_value(v.producer)
