"""Channel atoms: the union-find behind dependency groups.

Every weight layer that creates channels (a Conv's output channels, a Gemm/MatMul's output
columns) creates one *atom* per channel. A tensor axis that carries channels has a *label*: one
tuple of atoms per position; the position survives pruning iff every atom in its tuple survives
(a Reshape that merges a head axis and a head_dim axis gives tuples (head, dim)). Ops that
combine two tensors position by position (Add, Mul, Concat along another axis, attention's
batched MatMul) *unify* the atoms they pair up: unified atoms are one structure, removed
together. An atom is *pinned* (never removed) when something needs its position to exist: a
graph output, a LayerNorm over the axis, an op the tracer does not understand; the reason is
kept so a user can be told why a group is unprunable.

A Reshape that splits a channel axis into several (qkv [.., 3*H*D] -> [.., 3, H, D]) makes each
source atom *composite*: it survives iff its factor atoms (one per new axis) all survive. Heads
are then the factor atoms of the H axis, and pruning head h removes every q/k/v column that has
h as a factor.

`Trace` holds the atoms, the labels of every traced value and the `Edit`s pruning will make.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from compiler.ir import Node, Value, constant_value

__all__ = ["Atoms", "Edit", "Label", "Trace", "axes_of", "int_list", "node_name", "rank"]

Label = list[tuple[int, ...]]  # one tuple of atoms per position of a tensor axis


class Atoms:
    """Union-find over channel atoms, with births, pins and composites."""

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.birth: list[str] = []  # the node (and role) that created the atom
        self.pins: dict[int, str] = {}  # atom -> first reason it must stay
        self.composite: dict[int, tuple[int, ...]] = {}
        self.blocks: list[list[list[int]]] = []  # equal-removal constraints (grouped convs)

    def new(self, n: int, birth: str) -> Label:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        self.birth.extend([birth] * n)
        return [(a,) for a in range(start, start + n)]

    def find(self, a: int) -> int:
        p = self.parent
        root = a
        while p[root] != root:
            root = p[root]
        while p[a] != root:
            p[a], a = root, p[a]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def pin(self, atoms: Iterable[int], reason: str) -> None:
        for a in atoms:
            self.pins.setdefault(a, reason)

    def pin_label(self, label: Label | None, reason: str) -> None:
        if label:
            self.pin((a for t in label for a in t), reason)

    def unify(self, x: Label, y: Label, reason: str) -> bool:
        """Pair positions of two labels; pins both (and returns False) when they cannot pair."""
        if len(x) != len(y) or any(len(s) != len(t) for s, t in zip(x, y)):
            self.pin_label(x, reason)
            self.pin_label(y, reason)
            return False
        for s, t in zip(x, y):
            for a, b in zip(s, t):
                self.union(a, b)
        return True


@dataclass
class Edit:
    """One change pruning makes. kind:
    - "slice": keep the live positions of constant input `index` of `node` along `axis`;
      role "out" (the layer creates these channels), "in" (it reads them) or "param";
    - "grouped_in": a grouped Conv's weight, reindexed per group (`groups`);
    - "conv_group": a depthwise Conv's `group` attribute becomes the live count;
    - "shape_entry": entry `axis` of the shape input `index` (Reshape/Expand) becomes the live
      count of `label`;
    - "split": a Split's sizes along `axis` follow the live positions of `label`."""

    kind: str
    node: Node
    index: int
    axis: int
    label: Label
    role: str = "param"
    groups: int = 1


@dataclass
class Trace:
    atoms: Atoms = field(default_factory=Atoms)
    labels: dict[int, dict[int, Label]] = field(default_factory=dict)  # id(value) -> axis -> label
    values: dict[int, Value] = field(default_factory=dict)
    edits: list[Edit] = field(default_factory=list)

    def of(self, v: Value | None) -> dict[int, Label]:
        return {} if v is None else self.labels.get(id(v), {})

    def put(self, v: Value, axis: int, label: Label) -> None:
        self.labels.setdefault(id(v), {})[axis] = label
        self.values[id(v)] = v


def node_name(node: Node) -> str:
    return node.name or node.op_type


def rank(v: Value | None) -> int | None:
    return None if v is None or v.shape is None else len(v.shape)


def int_list(v: Value | None) -> list[int] | None:
    c = constant_value(v)
    return None if c is None else [int(x) for x in np.asarray(c).reshape(-1)]


def axes_of(node: Node, rank: int, default: list[int] | None = None) -> list[int] | None:
    """The `axes` of Squeeze/Unsqueeze/Reduce*/Slice (attribute or input 1), normalised."""
    axes = node.attr("axes")
    if axes is None and len(node.inputs) > 1 and node.op_type != "Slice":
        axes = int_list(node.inputs[1])
        if axes is None and node.inputs[1] is not None:
            return None
    if axes is None:
        axes = default
    return None if axes is None else sorted(a % rank for a in axes)
