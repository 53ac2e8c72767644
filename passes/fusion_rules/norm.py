"""LayerNormalization and RMSNorm from primitive ops.

LayerNorm over the last axis:
    μ = mean(x), d = x − μ, σ² = mean(d²), y = d/√(σ² + ε)·γ + β
found as ReduceMean, Sub, Pow(·, 2) or Mul(d, d), ReduceMean, Add(ε), then d/√(σ²+ε) as
Sqrt and Div, or d·r with r = 1/√(σ²+ε) written Reciprocal(Sqrt), Div(1, Sqrt) or
Pow(·, −0.5) (tf2onnx, paddle2onnx, torch's rsqrt), [, Mul(γ)][, Add(β)] (a missing γ is 1, a
missing β is 0). tf2onnx writes Keras' LayerNormalization in the affine form TensorFlow
computes it in,
    a = γ·r,  y = x·a + (β − μ·a)      (or x·a − μ·a without β),
which is the same y: x·a − μ·a = d·γ·r. Each becomes ONNX
`LayerNormalization(x, γ, β, axis=-1, epsilon=ε)` (standard domain, needs opset ≥ 17).

RMSNorm (Llama, T5):
    y = x/√(mean(x²) + ε)·γ
found as Pow(x, 2) or Mul(x, x), ReduceMean, Add(ε), Sqrt, Div (or Mul by Reciprocal), Mul(γ).
It becomes ONNX `RMSNormalization` (opset ≥ 23); below that it is recorded as an "rmsnorm"
fusion group (ONNX Runtime's SimplifiedLayerNormalization lives in the ONNX domain, where it is
not a standard op, so edgec does not emit it).

Conditions: both ReduceMeans reduce exactly the last axis with keepdims=1 and read the same x;
ε is a constant scalar; γ (and β) are constants with one value per channel (or one value), and
the channel count is known; intermediates are read only inside the pattern.
"""

from __future__ import annotations

import numpy as np

from compiler.ir import dtype_to_numpy
from passes.rewrite import (
    Alt,
    Const,
    Match,
    Op,
    Rule,
    RuleSet,
    Var,
    emit,
    finish,
    reduce_axes,
    scalar,
    shape_of,
)

__all__ = ["LayerNormFromPrimitives", "RMSNormFromPrimitives", "RULE_SET"]


def _rm(x, name: str) -> Op:
    return Op("ReduceMean", x, name=name, partial=True)


def _square(v) -> Alt:
    return Alt(Op("Pow", v, Const("two", 2.0), name="square"), Op("Mul", v, v, name="square"))


def _rsqrt(var_eps) -> Alt:
    """1/√(var_eps) as exporters write it: Reciprocal(Sqrt), Div(1, Sqrt), Pow(·, −0.5)."""
    sq = Op("Sqrt", var_eps, name="sqrt")
    return Alt(Op("Reciprocal", sq, name="recip"),
               Op("Div", Const("one", 1.0), sq, name="recip"),
               Op("Pow", var_eps, Const("minus_half", -0.5), name="recip"))


def _normalize(num, var_eps) -> Alt:
    """num / √(var_eps), or num · 1/√(var_eps) in any `_rsqrt` form."""
    return Alt(Op("Div", num, Op("Sqrt", var_eps, name="sqrt"), name="div"),
               Op("Mul", num, _rsqrt(var_eps), name="div"))


def _ln_patterns() -> tuple[Op, ...]:
    x = Var("x")
    mean = _rm(x, "mean")
    d = Op("Sub", x, mean, name="sub")
    var_eps = Op("Add", _rm(_square(d), "var"), Const("eps"), name="add_eps")
    # affine (γ, β), scale only, bias only (γ = 1 removed as x·1 by identity elimination) and
    # none (LayerNorm without affine parameters); longest first
    scaled = Op("Mul", _normalize(d, var_eps), Const("gamma"), name="mul_gamma")
    # tf2onnx's affine form: a = γ·r (or r), y = x·a + (β − μ·a) or x·a − μ·a
    r = _rsqrt(var_eps)
    a = Alt(Op("Mul", r, Const("gamma"), name="mul_gamma"), r)
    xa = Op("Mul", x, a, name="mul_x")
    ma = Op("Mul", mean, a, name="mul_mean")
    return (Op("Add", xa, Op("Sub", Const("beta"), ma, name="sub_beta"), name="add_beta"),
            Op("Sub", xa, ma, name="sub_mean"),
            Op("Add", scaled, Const("beta"), name="add_beta"), scaled,
            Op("Add", _normalize(d, var_eps), Const("beta"), name="add_beta"),
            _normalize(d, var_eps))


def _rms_pattern() -> Op:
    x = Var("x")
    n = _normalize(x, Op("Add", _rm(_square(x), "var"), Const("eps"), name="add_eps"))
    return Op("Mul", Alt(Op("Cast", n, name="cast"), n), Const("gamma"), name="mul_gamma")


def _check_common(m: Match, reducers: tuple[str, ...]) -> str | None:
    xs = shape_of(m["x"])
    rank = None if xs is None else len(xs)
    for r in reducers:
        node = m.named[r]
        axes = reduce_axes(node)
        if axes is None or len(axes) != 1 or not (
                axes[0] == -1 or (rank is not None and axes[0] == rank - 1)):
            return "reduction is not over the last axis"
        if node.attr("keepdims", 1) != 1:
            return "ReduceMean without keepdims"
    if "cast" in m.named:
        to = m.named["cast"].attr("to")
        if m["x"].dtype is None or to != m["x"].dtype:
            return "Cast changes the dtype inside the pattern"
    if scalar(m.consts["eps"]) is None:
        return "epsilon is not a scalar"
    channels = xs[-1] if xs else None
    for k in ("gamma", "beta"):
        c = m.consts.get(k)
        if c is None:
            continue
        if c.size != 1 and (c.size != c.shape[-1] or (isinstance(channels, int)
                                                      and c.size != channels)):
            return f"{k} is not one value per channel"
    if not isinstance(channels, int) and all(
            m.consts.get(k) is None or m.consts[k].size == 1 for k in ("gamma", "beta")):
        return "channel count unknown"
    return None


def _channel_vec(m: Match, key: str, default: float) -> np.ndarray:
    xs = shape_of(m["x"])
    c = m.consts.get(key)
    n = xs[-1] if xs and isinstance(xs[-1], int) else (c.size if c is not None else 1)
    dtype = np.float32 if m["x"].dtype in (None, 1) else dtype_to_numpy(m["x"].dtype)
    if c is None:
        return np.full((n,), default, dtype)
    return np.broadcast_to(c.reshape(-1), (n,)).astype(c.dtype).copy()


class LayerNormFromPrimitives(Rule):
    """ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div/Mul[/Add] -> LayerNormalization."""

    name = "layernorm"
    kind = "layernorm"
    patterns = _ln_patterns()
    candidates = (("", "LayerNormalization", 17),)

    def check(self, m: Match, ctx) -> str | None:
        if "mul_mean" in m.named:  # tf2onnx's form: x and μ must be scaled by the same a
            mean_out = m.named["mean"].outputs[0]
            sx = [v for v in m.named["mul_x"].inputs if v is not m["x"]]
            sm = [v for v in m.named["mul_mean"].inputs if v is not mean_out]
            if len(sx) != 1 or len(sm) != 1 or sx[0] is not sm[0]:
                return "x and the mean are scaled differently"
        return _check_common(m, ("mean", "var"))

    def rewrite(self, m: Match, graph, op) -> None:
        eps = scalar(m.consts["eps"])
        g = graph.make_constant(_channel_vec(m, "gamma", 1.0), "ln_gamma")
        b = graph.make_constant(_channel_vec(m, "beta", 0.0), "ln_beta")
        new = emit(graph, m.anchor, "LayerNormalization", [m["x"], g, b],
                   attrs={"axis": -1, "epsilon": float(eps)}, hint="LayerNorm")
        finish(m, graph, new.outputs[0])


class RMSNormFromPrimitives(Rule):
    """Pow/ReduceMean/Add/Sqrt/Div/Mul -> RMSNormalization or SimplifiedLayerNormalization."""

    name = "rmsnorm"
    kind = "rmsnorm"
    patterns = (_rms_pattern(),)
    # ONNX Runtime's SimplifiedLayerNormalization is registered in the ONNX domain, not
    # com.microsoft, and edgec's importer rejects it there, so it is not a candidate.
    candidates = (("", "RMSNormalization", 23),)

    def check(self, m: Match, ctx) -> str | None:
        return _check_common(m, ("var",))

    def rewrite(self, m: Match, graph, op) -> None:
        eps = float(scalar(m.consts["eps"]))
        g = graph.make_constant(_channel_vec(m, "gamma", 1.0), "rms_gamma")
        new = emit(graph, m.anchor, op[1], [m["x"], g], domain=op[0],
                   attrs={"axis": -1, "epsilon": eps}, hint="RMSNorm")
        finish(m, graph, new.outputs[0])


RULE_SET = RuleSet("norm", [LayerNormFromPrimitives(), RMSNormFromPrimitives()])
