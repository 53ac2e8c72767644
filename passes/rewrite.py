"""The pattern rewriter: declarative patterns, `check` that says why not, `rewrite`.

A `Rule` describes a subgraph by a small pattern tree whose root (the *anchor*) is the last op of
the subgraph: `Op("Add", Op("MatMul", Var("x"), Var("w")), Const("b"))`. Patterns are matched
backward from each anchor candidate through value producers, so one sweep over a graph costs
O(nodes × pattern size): candidates are indexed by op type once per sweep, never searched.

Pattern atoms:

- `Var(name)` binds any value; a name used twice must bind the same value (DAG patterns).
- `Const(name, value=None)` binds a constant (initializer that is not a graph input, or a
  `Constant` node output); with `value`, every element must equal it (within `rtol`).
- `Op(op_type, *inputs, attrs=..., name=...)` binds the producing node. The same `Op` object used
  twice in a tree must bind the same node. Add/Mul (and `commutative=True`) try both input
  orders. `partial=True` lets the node have more inputs than the pattern names.
- `Opt(op_type, inner)` matches `op_type(inner)` or `inner` alone (e.g. no-op Casts).
- `Alt(p1, p2, ...)` matches any alternative.

Matching enumerates every binding with generators, so commutative choices backtrack fully.
A match whose intermediate values (outputs of matched nodes other than the anchor) are read
outside the match, or are graph outputs, is refused with "intermediate value used outside the
pattern", unless the rule sets `allow_shared_intermediates`.

Target awareness: a rule that produces a fused op lists `candidates` (domain, op_type, the model
opset it needs). The first one the backend accepts (`ctx.accepts`) and the model's opset allows is
passed to `rewrite`; when none is, the match is recorded as a fusion group in
`node.meta["fusion_group"]` on every matched node and the graph is left as it is. Rules with
`plain = True` are standard-ONNX rewrites that always apply.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from compiler.ir import Graph, Node, Value
from compiler.ir import constant_value as const_array  # re-exported for the rule modules

__all__ = [
    "Alt", "Const", "GraphRule", "Match", "Op", "Opt", "Rule", "RuleSet", "RuleStats", "Var",
    "can_bypass",
    "apply_rule_sets", "const_array", "emit", "finish", "remove_nodes", "replace_output",
    "reduce_axes", "scalar", "shape_of",
]

_COMMUTATIVE = {"Add", "Mul", "Max", "Min", "Sum", "And", "Or", "Xor", "Equal"}


# --------------------------------------------------------------------------------------------
# constants
def scalar(arr: np.ndarray | None) -> float | None:
    """The single value of a constant whose elements are all equal, else None."""
    if arr is None or arr.size == 0:
        return None
    flat = np.asarray(arr, dtype=np.float64).reshape(-1)
    return float(flat[0]) if np.all(flat == flat[0]) else None


# --------------------------------------------------------------------------------------------
# patterns
class Pat:
    """Base of pattern atoms."""


@dataclass(eq=False)
class Var(Pat):
    name: str
    pred: Callable[[Value], bool] | None = None


@dataclass(eq=False)
class Const(Pat):
    name: str
    value: float | None = None
    rtol: float = 1e-3


class Op(Pat):
    """An op pattern; `attrs` maps attribute names to expected values or predicates."""

    def __init__(self, op_type: str, *inputs: Pat, domain: str = "", name: str | None = None,
                 attrs: dict[str, Any] | None = None, commutative: bool | None = None,
                 partial: bool = False, output: int = 0,
                 where: Callable[[Node], bool] | None = None) -> None:
        self.op_type, self.inputs, self.domain = op_type, inputs, domain
        self.name = name or op_type
        self.attrs = attrs or {}
        self.commutative = (op_type in _COMMUTATIVE and len(inputs) == 2
                            if commutative is None else commutative)
        self.partial, self.output, self.where = partial, output, where


class Alt(Pat):
    def __init__(self, *options: Pat) -> None:
        self.options = options


def Opt(op_type: str, inner: Pat, **kw: Any) -> Alt:  # noqa: N802 (reads as a pattern atom)
    """`op_type(inner)` or just `inner`."""
    return Alt(Op(op_type, inner, **kw), inner)


State = dict[Any, Any]


def _attr_ok(node: Node, name: str, want: Any) -> bool:
    got = node.attr(name)
    if callable(want):
        return bool(want(got))
    if isinstance(got, bytes):
        got = got.decode()
    if isinstance(want, (list, tuple)):
        return got is not None and list(got) == list(want)
    return got == want


def _match(pat: Pat, value: Value | None, st: State, graph: Graph) -> Iterator[State]:
    if value is None:
        return
    if isinstance(pat, Var):
        key = ("v", pat.name)
        if key in st:
            if st[key] is value:
                yield st
        elif pat.pred is None or pat.pred(value):
            yield {**st, key: value}
    elif isinstance(pat, Const):
        key = ("v", pat.name)
        if key in st:
            if st[key] is value:
                yield st
            return
        arr = const_array(value)
        if arr is None:
            return
        if pat.value is not None:
            s = scalar(arr)
            if s is None or not math.isclose(s, pat.value, rel_tol=pat.rtol, abs_tol=1e-12):
                return
        yield {**st, key: value, ("c", pat.name): arr}
    elif isinstance(pat, Alt):
        for opt in pat.options:
            yield from _match(opt, value, st, graph)
    elif isinstance(pat, Op):
        node = value.producer
        if (node is None or node.graph is not graph or node.op_type != pat.op_type
                or node.domain != pat.domain or value.index != pat.output):
            return
        key = ("n", id(pat))
        if key in st:
            if st[key] is node:
                yield st
            return
        n_in = len(pat.inputs)
        if len(node.inputs) < n_in or (len(node.inputs) > n_in and not pat.partial):
            return
        if any(not _attr_ok(node, k, w) for k, w in pat.attrs.items()):
            return
        if pat.where is not None and not pat.where(node):
            return
        st = {**st, key: node, ("name", pat.name): node}
        orders = [tuple(range(n_in))]
        if pat.commutative:
            orders.append((1, 0))
        for order in orders:
            yield from _match_seq([pat.inputs[i] for i in order], node.inputs[:n_in], st, graph)


def _match_seq(pats: list[Pat], values: list[Value | None], st: State,
               graph: Graph) -> Iterator[State]:
    if not pats:
        yield st
        return
    for s in _match(pats[0], values[0], st, graph):
        yield from _match_seq(pats[1:], values[1:], s, graph)


def _root_types(pat: Pat) -> set[str]:
    if isinstance(pat, Op):
        return {pat.op_type}
    if isinstance(pat, Alt):
        return set().union(*(_root_types(o) for o in pat.options))
    return set()


# --------------------------------------------------------------------------------------------
# matches and rules
@dataclass
class Match:
    """One binding of a rule's pattern: nodes by pattern name, values and constants by name."""

    rule: Rule
    anchor: Node
    nodes: list[Node]
    named: dict[str, Node]
    values: dict[str, Value]
    consts: dict[str, np.ndarray]
    extra: dict[str, Any] = field(default_factory=dict)  # what check() found for rewrite()

    @classmethod
    def from_state(cls, rule: Rule, anchor: Node, st: State) -> Match:
        nodes, seen = [], set()
        for k, v in st.items():
            if k[0] == "n" and id(v) not in seen:
                seen.add(id(v))
                nodes.append(v)
        return cls(rule, anchor, nodes,
                   {k[1]: v for k, v in st.items() if k[0] == "name"},
                   {k[1]: v for k, v in st.items() if k[0] == "v"},
                   {k[1]: v for k, v in st.items() if k[0] == "c"})

    def __getitem__(self, name: str) -> Value:
        return self.values[name]

    @property
    def output(self) -> Value:
        return self.anchor.outputs[0]


class Rule:
    """A fusion/rewrite rule. Subclasses set the class attributes and override the hooks."""

    name: str = ""
    kind: str = ""  # fusion-group kind recorded when the fused op is not accepted
    patterns: tuple[Pat, ...] = ()
    #: (domain, op_type, min model opset of that domain or 0) in order of preference
    candidates: tuple[tuple[str, str, int], ...] = ()
    plain: bool = False  # a standard-ONNX rewrite that always applies
    allow_shared_intermediates: bool = False

    def anchors(self) -> set[str]:
        return set().union(*(_root_types(p) for p in self.patterns)) if self.patterns else set()

    def match(self, node: Node, graph: Graph) -> Iterator[Match]:
        for pat in self.patterns:
            for st in _match(pat, node.outputs[0] if node.outputs else None, {}, graph):
                yield Match.from_state(self, node, st)

    def check(self, m: Match, ctx: Any) -> str | None:
        """None when the rewrite is valid, else the reason it is refused."""
        return None

    def choose(self, m: Match, graph: Graph, ctx: Any) -> tuple[str, str] | None:
        """The fused op to produce: the first candidate the backend and the opset accept."""
        for domain, op_type, min_opset in self.candidates:
            opset = graph.root.opset_imports.get(domain, 0 if domain else 1)
            if ctx is not None and ctx.accepts(domain, op_type) and (
                    not min_opset or opset >= min_opset):
                return domain, op_type
        return None

    def rewrite(self, m: Match, graph: Graph, op: tuple[str, str] | None) -> None:
        raise NotImplementedError


class GraphRule:
    """A rule that is not a local pattern (CSE, sibling merging): one linear walk per sweep."""

    name: str = ""

    def run(self, graph: Graph, ctx: Any, stats: RuleStats) -> int:
        """Rewrite `graph`; returns the number of rewrites."""
        raise NotImplementedError


@dataclass
class RuleSet:
    name: str
    rules: list[Rule | GraphRule]


@dataclass
class RuleStats:
    matched: int = 0
    rewritten: int = 0
    grouped: int = 0
    refused: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    counted: set[int] = field(default_factory=set, repr=False)  # anchors already counted

    def to_dict(self) -> dict[str, Any]:
        return {"matched": self.matched, "rewritten": self.rewritten, "grouped": self.grouped,
                "refused": dict(self.refused)}


# --------------------------------------------------------------------------------------------
# engine
def _shared_intermediate(m: Match) -> bool:
    inside = {id(n) for n in m.nodes}
    for n in m.nodes:
        if n is m.anchor:
            continue
        for o in n.outputs:
            if o.is_graph_output() or any(id(u) not in inside for u, _ in o.uses):
                return True
    return False


def remove_nodes(graph: Graph, nodes: list[Node], strict: bool = True) -> None:
    """Remove `nodes` (already disconnected from the rest) in an order that keeps links exact;
    with `strict=False`, nodes whose outputs are still read elsewhere are kept."""
    left = [n for n in nodes if n.graph is graph]
    while left:
        keep = []
        for n in left:
            if any(o.uses or o.is_graph_output() for o in n.outputs):
                keep.append(n)
            else:
                graph.remove(n)
        if len(keep) == len(left):
            if not strict:
                return
            raise ValueError(f"cannot remove matched nodes {keep[:3]}: outputs still used")
        left = keep


def replace_output(graph: Graph, old: Value, new: Value) -> None:
    """Point every reader of `old` at `new`, keeping graph output names; copies type info."""
    if new.dtype is None:
        new.dtype = old.dtype
    if new.shape is None:
        new.shape = old.shape
    if not graph.bypass(old, new):
        raise ValueError(f"cannot reroute {old.name!r}")


def _record_group(graph: Graph, m: Match) -> None:
    gid = graph.unique_name(m.rule.kind or m.rule.name)
    group = {"id": gid, "kind": m.rule.kind or m.rule.name, "rule": m.rule.name}
    for n in m.nodes:
        n.meta["fusion_group"] = dict(group)


def _sweep(graph: Graph, rule_sets: list[RuleSet], ctx: Any,
           stats: dict[str, RuleStats]) -> int:
    """One pass of every rule set. Anchors are indexed by op type once per rule set (a constant
    number of linear walks), so later rule sets see the nodes earlier ones created."""
    changed = 0
    for rs in rule_sets:
        index: dict[str, list[Node]] = defaultdict(list)
        for n in graph:
            index[n.op_type].append(n)
        for rule in rs.rules:
            st = stats.setdefault(rule.name, RuleStats())
            if isinstance(rule, GraphRule):
                changed += rule.run(graph, ctx, st)
                continue
            for op_type in sorted(rule.anchors()):
                for node in index.get(op_type, ()):
                    if node.graph is not graph or "fusion_group" in node.meta:
                        continue
                    changed += _try(graph, rule, node, ctx, st)
    return changed


# Precisions whose lowering (Q/DQ around the node) a fused op would hide from the backend.
QUANTIZED = frozenset({"int8", "int4-weight"})


def runs_quantized(node: Node) -> bool:
    """Lowered by the precision pass, or (in a Q/DQ graph read from a file, which has no
    `meta`) reading a DequantizeLinear: backends turn DQ -> op [-> Q] into an integer kernel."""
    return node.meta.get("precision") in QUANTIZED or any(
        v is not None and v.producer is not None and v.producer.op_type == "DequantizeLinear"
        for v in node.inputs)


def _try(graph: Graph, rule: Rule, node: Node, ctx: Any, st: RuleStats) -> int:
    reason = None
    for m in rule.match(node, graph):
        if any("fusion_group" in n.meta for n in m.nodes):
            reason = "node already in a fusion group"
            continue
        if any(runs_quantized(n) for n in m.nodes):
            reason = "node runs quantized: its Q/DQ pattern is left for the backend to fuse"
            continue
        if not rule.allow_shared_intermediates and _shared_intermediate(m):
            reason = "intermediate value used outside the pattern"
            continue
        reason = rule.check(m, ctx)
        if reason is not None:
            continue
        st.counted.add(id(node))
        st.matched += 1
        op = None if rule.plain else rule.choose(m, graph, ctx)
        if rule.plain or op is not None:
            rule.rewrite(m, graph, op)
            st.rewritten += 1
            return 1
        _record_group(graph, m)
        st.grouped += 1
        return 0
    if reason is not None and id(node) not in st.counted:
        st.counted.add(id(node))
        st.matched += 1
        st.refused[reason] += 1
    return 0


def apply_rule_sets(graph: Graph, rule_sets: list[RuleSet], ctx: Any = None,
                    max_sweeps: int = 4) -> tuple[int, int, dict[str, RuleStats]]:
    """Apply every rule until nothing changes (or `max_sweeps`); returns
    (rewrites, sweeps, per-rule stats). Stats count the last refusal reason per anchor."""
    stats: dict[str, RuleStats] = {}
    total, sweeps = 0, 0
    for _ in range(max_sweeps):
        sweeps += 1
        n = _sweep(graph, rule_sets, ctx, stats)
        total += n
        if not n:
            break
    return total, sweeps, stats


# --------------------------------------------------------------------------------------------
# helpers for rewrite()
def emit(graph: Graph, before: Node, op_type: str, inputs: list[Value | None], *,
         domain: str = "", attrs: dict[str, Any] | None = None, outputs: int = 1,
         hint: str = "") -> Node:
    """A new node inserted before `before`, with fresh uniquely named outputs. A non-standard
    domain is added to the model's opset imports (version 1) when missing."""
    base = graph.unique_name(hint or f"{before.name or before.op_type}_{op_type}")
    node = Node(op_type, inputs, [Value(f"{base}_out{i}") for i in range(outputs)],
                domain=domain, name=base)
    for k, v in (attrs or {}).items():
        node.set_attr(k, v)
    if domain:
        graph.root.opset_imports.setdefault(domain, 1)
    graph.insert_before(before, node)
    return node


def finish(m: Match, graph: Graph, new: Value) -> None:
    """Reroute the anchor's output to `new` and drop every matched node no longer read."""
    replace_output(graph, m.output, new)
    remove_nodes(graph, m.nodes, strict=not m.rule.allow_shared_intermediates)


def can_bypass(old: Value, new: Value) -> bool:
    """Whether `Graph.bypass(old, new)` can succeed (graph outputs keep their names)."""
    if not old.is_graph_output():
        return True
    g = old.graph
    return not (new.producer is None or new.graph is not g or new.is_graph_output()
                or (g is not None and any(v is new for v in g.inputs)))


def shape_of(v: Value | None) -> tuple | None:
    """The shape of `v`: its inferred shape, or a constant's dims."""
    if v is None:
        return None
    if v.shape is not None:
        return v.shape
    arr = const_array(v)
    return None if arr is None else arr.shape


def reduce_axes(node: Node) -> list[int] | None:
    """The axes of a Reduce* node (attribute before opset 18, input after); None if dynamic."""
    axes = node.attr("axes")
    if axes is not None:
        return list(axes)
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        arr = const_array(node.inputs[1])
        return None if arr is None else [int(a) for a in arr.reshape(-1)]
    return None
