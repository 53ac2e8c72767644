"""MatMul + Add -> Gemm, and biased MatMuls as one kernel.

`Gemm(A, B, C) = A·B + C` (alpha = beta = 1, no transposes) equals `Add(MatMul(A, B), C)`
exactly when A and B are 2-D and C broadcasts to [M, N] without enlarging it, i.e. C has shape
[N], [1, N], [1] or is a scalar. The rewrite is standard ONNX and always applies.

For A of rank > 2 (transformer projections: [B, S, K]·[K, N] + [N]) Gemm does not apply; the
pair is recorded as a fusion group of kind "matmul_bias" (a GEMM with a bias epilogue, one
kernel in every backend's library) and left in the graph.

Conditions: the MatMul output is read only by the Add; ranks of A and B and the shape of C are
known.
"""

from __future__ import annotations

from passes.rewrite import Match, Op, Rule, RuleSet, Var, emit, finish, shape_of

__all__ = ["MatMulAddToGemm", "BiasedMatMul", "RULE_SET", "GROUP_RULE_SET"]

_PATTERN = Op("Add", Op("MatMul", Var("a"), Var("b"), name="matmul"), Var("c"), name="add")


class MatMulAddToGemm(Rule):
    """Add(MatMul(A, B), C) -> Gemm(A, B, C) for 2-D A and B."""

    name = "matmul_add_gemm"
    kind = "gemm"
    plain = True
    patterns = (_PATTERN,)

    def check(self, m: Match, ctx) -> str | None:
        a, b, c = shape_of(m["a"]), shape_of(m["b"]), shape_of(m["c"])
        if a is None or b is None or c is None:
            return "shape unknown"
        if len(a) != 2 or len(b) != 2:
            return "MatMul operands are not 2-D"
        n = b[1]
        if len(c) > 2 or (len(c) == 2 and c[0] != 1) or (c and c[-1] not in (1, n)):
            return "bias does not broadcast as a row vector"
        if m["c"].dtype is not None and m["a"].dtype is not None and m["c"].dtype != m[
                "a"].dtype:
            return "bias dtype differs"
        return None

    def rewrite(self, m: Match, graph, op) -> None:
        mm = m.named["matmul"]
        new = emit(graph, m.anchor, "Gemm", [m["a"], m["b"], m["c"]], hint=mm.name or "gemm")
        finish(m, graph, new.outputs[0])


class BiasedMatMul(Rule):
    """Add(MatMul(A, B), C) with a constant bias C over the last axis, A of rank > 2: recorded
    as one "matmul_bias" kernel (no standard fused op exists)."""

    name = "matmul_bias_group"
    kind = "matmul_bias"
    patterns = (_PATTERN,)

    def check(self, m: Match, ctx) -> str | None:
        c = shape_of(m["c"])
        if c is None or len(c) > 1 and any(d != 1 for d in c[:-1]):
            return "bias is not a vector over the last axis"
        return None


RULE_SET = RuleSet("gemm", [MatMulAddToGemm()])
GROUP_RULE_SET = RuleSet("matmul_bias", [BiasedMatMul()])
