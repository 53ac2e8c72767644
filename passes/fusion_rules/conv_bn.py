"""Conv + BatchNormalization folding (inference).

BatchNormalization in inference mode is a per-channel affine map,
    y = γ·(z − μ)/√(σ² + ε) + β,
and z = W∗x + b is linear in W and b, so the pair is one Conv with
    s  = γ/√(σ² + ε)
    W' = W·s        (s broadcast over output channels: W'[o] = W[o]·s[o])
    b' = (b − μ)·s + β      (b = 0 when the Conv has no bias).

Conditions: the Conv's weight, bias and all four BN parameters are constants; the Conv output
is read only by the BN; the BN is in inference mode (`training_mode` absent or 0) and its
running-mean/var outputs are unused; the weight is floating point. The fold is computed in
float64 and stored in the weight's dtype.
"""

from __future__ import annotations

import numpy as np

from passes.rewrite import Const, Match, Op, Rule, RuleSet, Var, emit, finish

__all__ = ["ConvBatchNorm", "RULE_SET"]


class ConvBatchNorm(Rule):
    """BatchNormalization(Conv(x, W[, b])) -> Conv(x, W', b')."""

    name = "conv_bn"
    kind = "conv_bn"
    plain = True
    patterns = (
        Op("BatchNormalization",
           Op("Conv", Var("x"), Const("w"), name="conv"),
           Const("gamma"), Const("beta"), Const("mean"), Const("var"), name="bn"),
        Op("BatchNormalization",
           Op("Conv", Var("x"), Const("w"), Const("b"), name="conv"),
           Const("gamma"), Const("beta"), Const("mean"), Const("var"), name="bn"),
    )

    def check(self, m: Match, ctx) -> str | None:
        bn = m.named["bn"]
        if bn.attr("training_mode", 0):
            return "BatchNormalization in training mode"
        if any(o.uses or o.is_graph_output() for o in bn.outputs[1:]):
            return "BatchNormalization running statistics are used"
        w = m.consts["w"]
        if not np.issubdtype(w.dtype, np.floating):
            return "Conv weight is not floating point"
        cout = w.shape[0]
        for k in ("gamma", "beta", "mean", "var"):
            if m.consts[k].size not in (1, cout):
                return f"BatchNormalization {k} does not have one value per channel"
        return None

    def rewrite(self, m: Match, graph, op) -> None:
        conv, bn = m.named["conv"], m.named["bn"]
        w = m.consts["w"].astype(np.float64)
        cout = w.shape[0]
        eps = float(bn.attr("epsilon", 1e-5))

        def vec(k: str) -> np.ndarray:
            return np.broadcast_to(m.consts[k].astype(np.float64).reshape(-1), (cout,))

        s = vec("gamma") / np.sqrt(vec("var") + eps)
        b = m.consts["b"].astype(np.float64) if "b" in m.consts else np.zeros(cout)
        w2 = (w * s.reshape((cout,) + (1,) * (w.ndim - 1))).astype(m.consts["w"].dtype)
        b2 = ((b - vec("mean")) * s + vec("beta")).astype(m.consts["w"].dtype)
        wv = graph.make_constant(w2, (conv.name or "conv") + "_w_bn")
        bv = graph.make_constant(b2, (conv.name or "conv") + "_b_bn")
        new = emit(graph, bn, "Conv", [m["x"], wv, bv], hint=conv.name or "conv")
        for k, a in conv.attrs.items():
            new.attrs[k] = a
        new.meta.update(conv.meta)
        finish(m, graph, new.outputs[0])


RULE_SET = RuleSet("conv_bn", [ConvBatchNorm()])
