"""Dependency groups: what the channel trace (passes.pruning.trace) allows pruning to remove.

A *unit* is a class of unified atoms that is free: no atom in it is pinned and it is not the
composite of a split (a split axis is pruned through its factors: heads, not q/k/v columns).
Removing a unit removes every tensor position whose tuple holds one of its atoms, or a composite
atom that has one of them as a factor. A composite atom whose class is pinned, or coupled to
anything else, pins its factors (the split cannot be undone elsewhere); this is iterated to a
fixed point for nested splits.

A *group* is the set of units created by the same layers (same births): the output channels of
one Conv and everything coupled to them through a residual chain, or the heads of one attention,
or the hidden units of one gated MLP. Groups are what importance is standardized over and what
the manifest reports (kept/removed). Grouped convolutions add a block constraint: every block
(one conv group) loses the same number of units. A group with no free unit is *unprunable* and
keeps the first reason one of its atoms was pinned; it is reported by the layer that created
the channels, or for a split axis (heads, head_dim) as "<Reshape> axis <j>".
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np

from compiler.ir import Graph
from passes.pruning.atoms import Label
from passes.pruning.trace import Trace, trace

__all__ = ["Analysis", "Group", "analyze"]


@dataclass
class Group:
    """Units created by the same layers; `blocks` lists units per conv group when the group must
    lose the same number in each."""

    name: str
    units: list[int]
    width: int = 1  # positions of the creating layers' outputs per unit
    blocks: list[list[int]] | None = None
    reason: str | None = None  # why it cannot be pruned (unprunable groups only)

    def to_dict(self) -> dict:
        d = {"name": self.name, "units": len(self.units), "width": self.width}
        if self.blocks:
            d["blocks"] = len(self.blocks)
        if self.reason:
            d["reason"] = self.reason
        return d


@dataclass
class Analysis:
    graph: Graph
    trace: Trace
    groups: list[Group]
    unprunable: list[Group]
    unit_group: dict[int, int] = field(default_factory=dict)  # unit root -> group index

    def killers(self, atom: int) -> set[int]:
        """The units whose removal removes `atom` (itself, or any factor's)."""
        A = self.trace.atoms
        out: set[int] = set()
        stack = [atom]
        while stack:
            a = stack.pop()
            r = A.find(a)
            if r in self.unit_group:
                out.add(r)
            stack.extend(A.composite.get(a, ()))
        return out

    def position_killers(self, label: Label) -> list[set[int]]:
        cache: dict[int, set[int]] = {}
        out = []
        for t in label:
            s: set[int] = set()
            for a in t:
                if a not in cache:
                    cache[a] = self.killers(a)
                s |= cache[a]
            out.append(s)
        return out

    def keep_mask(self, label: Label, removed: set[int]) -> np.ndarray:
        return np.array([not (k & removed) for k in self.position_killers(label)], bool)


def _shorten(births: list[str]) -> str:
    names = sorted({b.rsplit(":", 1)[0] for b in births})
    return names[0] if len(names) == 1 else f"{names[0]} (+{len(names) - 1} coupled)"


def _birth_name(birth: str) -> str:
    """A creating layer's name; a split's factor axis as 'Reshape name axis j'."""
    node, role = birth.rsplit(":", 1)
    return node if role == "out" else f"{node} {role[:4]} {role[4:]}"


def analyze(graph: Graph) -> Analysis:
    """Trace `graph` and form its dependency groups (shapes must be inferred)."""
    t = trace(graph)
    A = t.atoms
    n = len(A.parent)

    def root_reasons() -> dict[int, str]:
        rr: dict[int, str] = {}
        for a, why in A.pins.items():
            rr.setdefault(A.find(a), why)
        return rr

    members: dict[int, list[int]] = defaultdict(list)
    for a in range(n):
        members[A.find(a)].append(a)
    changed = True
    while changed:
        changed = False
        rr = root_reasons()
        for a, factors in A.composite.items():
            r = A.find(a)
            why = rr.get(r) or ("the split channels are also coupled elsewhere"
                                if len(members[r]) > 1 else None)
            if why is None:
                continue
            for f in factors:
                if f not in A.pins:
                    A.pin([f], why)
                    changed = True
    rr = root_reasons()
    derived = {A.find(a) for a in A.composite}
    free = [r for r in members if r not in rr and r not in derived]

    # grouped convolutions: equal removal per block, or nothing
    block_of: dict[int, tuple[int, int]] = {}
    constraints: list[list[list[int]]] = []
    for blocks in A.blocks:
        roots = [[A.find(a) for a in b] for b in blocks]
        flat = [r for b in roots for r in b]
        if all(r in rr or r in derived for r in flat):
            continue
        if any(r in rr or r in derived for r in flat) or len(set(flat)) != len(flat) or \
                any(r in block_of for r in flat):
            A.pin([a for b in blocks for a in b], "a grouped Conv's groups cannot lose the same "
                  "number of channels")
            continue
        for k, b in enumerate(roots):
            for r in b:
                block_of[r] = (len(constraints), k)
        constraints.append(roots)
    rr = root_reasons()
    free = [r for r in free if r not in rr]

    by_key: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for r in sorted(free):
        by_key[tuple(sorted({A.birth[a] for a in members[r]}))].append(r)
    groups: list[Group] = []
    unit_group: dict[int, int] = {}
    for key, units in by_key.items():
        g = Group(_shorten(list(key)), units)
        cons = {block_of[u][0] for u in units if u in block_of}
        if cons:
            c = constraints[cons.pop()]
            if cons or sorted(r for b in c for r in b) != sorted(units):
                g.reason = "a grouped Conv's blocks span several groups"
            else:
                g.blocks = c
        if g.reason is None:
            for u in units:
                unit_group[u] = len(groups)
            groups.append(g)
    # widths: positions of each group's creating layers' outputs per unit
    analysis = Analysis(graph, t, groups, [], unit_group)
    for e in t.edits:
        if e.kind == "slice" and e.role == "out":
            ks = analysis.position_killers(e.label)
            for gi in {unit_group[u] for k in ks for u in k}:
                cnt = sum(1 for k in ks if any(unit_group.get(u) == gi for u in k))
                groups[gi].width = max(groups[gi].width, cnt // max(len(groups[gi].units), 1))
    # unprunable groups, reported by the layer that created the channels
    seen: dict[str, str] = {}
    for a in range(n):
        birth = A.birth[a]
        role = birth.rsplit(":", 1)[-1]
        if not (role == "out" or role.startswith("axis")) or birth in seen:
            continue
        r = A.find(a)
        if r in rr and not any(A.find(b) in unit_group for b in members[r]):
            seen[birth] = rr[r]
    free_births = {A.birth[a] for u in unit_group for a in members[u]}
    analysis.unprunable = [Group(_birth_name(b), [], reason=why)
                           for b, why in seen.items() if b not in free_births]
    return analysis
