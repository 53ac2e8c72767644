"""Transpose and Reshape cancellation (standard ONNX, always applied).

- Transpose(Transpose(x, p1), p2) = Transpose(x, p) with p[j] = p1[p2[j]]; when p is the
  identity the pair is x itself. The inner Transpose stays if something else reads it.
- Transpose(x, identity perm) = x.
- Reshape(Reshape(x, s1), s2) = Reshape(x, s2) when s2 is constant, has no 0 entries (a 0
  copies a dim of the *intermediate*) and allowzero is 0 on both.
- Reshape(x, s) = x when every entry of s is 0 (copy) or equals x's dim, at most one is -1 and
  all other dims of x are known, and len(s) = rank(x): the output shape is x's shape.

Conditions: perms are given explicitly; the rewritten value is not a graph output that would
have to be renamed onto a graph input.
"""

from __future__ import annotations

from passes.rewrite import (
    Match,
    Op,
    Rule,
    RuleSet,
    Var,
    can_bypass,
    const_array,
    emit,
    finish,
    shape_of,
)

__all__ = ["TransposePair", "IdentityTranspose", "ReshapePair", "IdentityReshape", "RULE_SET"]


class TransposePair(Rule):
    """Transpose(Transpose(x, p1), p2) -> Transpose(x, p1∘p2) or x."""

    name = "transpose_pair"
    kind = "transpose"
    plain = True
    allow_shared_intermediates = True
    patterns = (Op("Transpose", Op("Transpose", Var("x"), name="t1"), name="t2"),)

    def check(self, m: Match, ctx) -> str | None:
        p1, p2 = m.named["t1"].attr("perm"), m.named["t2"].attr("perm")
        if p1 is None or p2 is None or len(p1) != len(p2):
            return "perm not given"
        perm = [p1[j] for j in p2]
        m.extra["perm"] = perm
        if perm == sorted(perm) and not can_bypass(m.output, m["x"]):
            return "output is a graph output"
        return None

    def rewrite(self, m: Match, graph, op) -> None:
        perm = m.extra["perm"]
        if perm == list(range(len(perm))):
            finish(m, graph, m["x"])
            return
        new = emit(graph, m.anchor, "Transpose", [m["x"]], attrs={"perm": perm})
        finish(m, graph, new.outputs[0])


class IdentityTranspose(Rule):
    name = "identity_transpose"
    kind = "transpose"
    plain = True
    patterns = (Op("Transpose", Var("x"), name="t"),)

    def check(self, m: Match, ctx) -> str | None:
        p = m.named["t"].attr("perm")
        if p is None or list(p) != list(range(len(p))):
            return "not an identity perm"
        return None if can_bypass(m.output, m["x"]) else "output is a graph output"

    def rewrite(self, m: Match, graph, op) -> None:
        finish(m, graph, m["x"])


class ReshapePair(Rule):
    name = "reshape_pair"
    kind = "reshape"
    plain = True
    allow_shared_intermediates = True
    patterns = (Op("Reshape", Op("Reshape", Var("x"), Var("s1"), name="r1"), Var("s2"),
                   name="r2"),)

    def check(self, m: Match, ctx) -> str | None:
        s2 = const_array(m["s2"])
        if s2 is None or (s2 == 0).any():
            return "outer target not constant or copies dims"
        if m.named["r1"].attr("allowzero", 0) or m.named["r2"].attr("allowzero", 0):
            return "allowzero"
        return None

    def rewrite(self, m: Match, graph, op) -> None:
        new = emit(graph, m.anchor, "Reshape", [m["x"], m["s2"]])
        finish(m, graph, new.outputs[0])


class IdentityReshape(Rule):
    name = "identity_reshape"
    kind = "reshape"
    plain = True
    patterns = (Op("Reshape", Var("x"), Var("s"), name="r"),)

    def check(self, m: Match, ctx) -> str | None:
        s, xs = const_array(m["s"]), shape_of(m["x"])
        if s is None or xs is None or len(s.reshape(-1)) != len(xs):
            return "shape not known"
        unknown = 0
        for t, d in zip(s.reshape(-1).tolist(), xs):
            if t == -1:
                unknown += 1
            elif t != 0 and t != d:
                return "changes the shape"
            elif t == 0 and m.named["r"].attr("allowzero", 0):
                return "allowzero"
        if unknown > 1 or (unknown and not all(
                isinstance(d, int) or t == 0 for t, d in zip(s.reshape(-1).tolist(), xs)
                if t != -1)):
            return "shape not known"
        return None if can_bypass(m.output, m["x"]) else "output is a graph output"

    def rewrite(self, m: Match, graph, op) -> None:
        finish(m, graph, m["x"])


RULE_SET = RuleSet("transpose", [TransposePair(), IdentityTranspose(), ReshapePair(),
                                 IdentityReshape()])
