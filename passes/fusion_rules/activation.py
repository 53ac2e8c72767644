"""GELU from its erf and tanh forms, and bias/activation epilogues.

GELU (exact):  y = ½·x·(1 + erf(x/√2))
    found as Div(x, √2) or Mul(x, 1/√2), Erf, Add(1), and two Muls (x and ½ in any
    association). Becomes ONNX `Gelu` (opset ≥ 20) or `com.microsoft.Gelu`.
GELU (tanh):   y = ½·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))
    found with x³ as Pow(x, 3) or Mul(x, Mul(x, x)). Becomes ONNX `Gelu(approximate="tanh")`
    (opset ≥ 20) or `com.microsoft.FastGelu`.
Epilogues (ONNX Runtime contrib ops):
    com.microsoft.Gelu(A + b)     -> BiasGelu(A, b)      b constant, 1-D over the last axis
    com.microsoft.FastGelu(A + b) -> FastGelu(A, b)      same condition
    Act(Conv(x, W, B))            -> FusedConv(x, W, B, activation=Act) for Relu, Sigmoid,
                                     Tanh, LeakyRelu, Clip (Relu6; scalar bounds) and
                                     HardSigmoid (alpha, beta in activation_params); HardSwish,
                                     and any of them when not accepted: a "conv_act" group.
SiLU:          y = x·σ(x)  ->  com.microsoft.QuickGelu(x, alpha=1), as QuickGelu = x·σ(αx).

Constants are compared with a relative tolerance of 1e-3 (exporters round √2 and √(2/π)).
Conditions: every intermediate is read only inside the pattern.
"""

from __future__ import annotations

import math

from passes.rewrite import Alt, Const, Match, Op, Rule, RuleSet, Var, emit, finish, shape_of

__all__ = ["GeluErf", "GeluTanh", "BiasGelu", "ConvActivation", "SiLU", "RULE_SET",
           "EPILOGUE_RULE_SET"]


def _gelu_outer(x: Var, inner: Op) -> tuple[Op, ...]:
    """½·x·inner in the three association orders exporters produce."""
    return (
        Op("Mul", Op("Mul", x, inner, name="mul_x"), Const("half", 0.5), name="out"),
        Op("Mul", Op("Mul", x, Const("half", 0.5), name="mul_x"), inner, name="out"),
        Op("Mul", x, Op("Mul", inner, Const("half", 0.5), name="mul_x"), name="out"),
    )


def _erf_patterns() -> tuple[Op, ...]:
    x = Var("x")
    scaled = Alt(Op("Div", x, Const("sqrt2", math.sqrt(2.0))),
                 Op("Mul", x, Const("inv_sqrt2", 1 / math.sqrt(2.0))))
    return _gelu_outer(x, Op("Add", Op("Erf", scaled), Const("one", 1.0)))


def _tanh_patterns() -> tuple[Op, ...]:
    x = Var("x")
    cube = Alt(Op("Pow", x, Const("three", 3.0)), Op("Mul", x, Op("Mul", x, x)))
    poly = Op("Add", x, Op("Mul", Const("kappa", 0.044715), cube))
    inner = Op("Mul", Const("beta", math.sqrt(2 / math.pi)), poly)
    return _gelu_outer(x, Op("Add", Const("one", 1.0), Op("Tanh", inner)))


class GeluErf(Rule):
    """½·x·(1 + erf(x/√2)) -> Gelu."""

    name = "gelu_erf"
    kind = "gelu"
    patterns = _erf_patterns()
    candidates = (("", "Gelu", 20), ("com.microsoft", "Gelu", 0))
    approximate = "none"

    def rewrite(self, m: Match, graph, op) -> None:
        attrs = {"approximate": self.approximate} if op[0] == "" else {}
        new = emit(graph, m.anchor, op[1], [m["x"]], domain=op[0], attrs=attrs, hint="Gelu")
        finish(m, graph, new.outputs[0])


class GeluTanh(GeluErf):
    """½·x·(1 + tanh(√(2/π)(x + 0.044715x³))) -> Gelu(tanh) / FastGelu."""

    name = "gelu_tanh"
    patterns = _tanh_patterns()
    candidates = (("", "Gelu", 20), ("com.microsoft", "FastGelu", 0))
    approximate = "tanh"


def _bias_ok(m: Match) -> str | None:
    b, a = m.consts["bias"], shape_of(m["a"])
    if b.ndim != 1 or a is None or not a or a[-1] != b.shape[0]:
        return "bias is not 1-D over the last axis"
    return None


class BiasGelu(Rule):
    """com.microsoft Gelu/FastGelu of (A + b) -> BiasGelu(A, b) / FastGelu(A, b)."""

    name = "bias_gelu"
    kind = "bias_gelu"
    patterns = (
        Op("Gelu", Op("Add", Var("a"), Const("bias"), name="add"), domain="com.microsoft",
           name="act"),
        Op("FastGelu", Op("Add", Var("a"), Const("bias"), name="add"), domain="com.microsoft",
           name="act"),
    )
    candidates = (("com.microsoft", "BiasGelu", 0),)

    def check(self, m: Match, ctx) -> str | None:
        return _bias_ok(m)

    def choose(self, m: Match, graph, ctx):
        if m.named["act"].op_type == "FastGelu":
            return ("com.microsoft", "FastGelu") if ctx is not None and ctx.accepts(
                "com.microsoft", "FastGelu") else None
        return super().choose(m, graph, ctx)

    def rewrite(self, m: Match, graph, op) -> None:
        new = emit(graph, m.anchor, op[1], [m["a"], m["bias"]], domain=op[0], hint=op[1])
        finish(m, graph, new.outputs[0])


# Activations ONNX Runtime's FusedConv applies itself; HardSwish only forms a group.
_FUSED_CONV_ACTS = ("Relu", "Sigmoid", "Tanh", "LeakyRelu", "Clip", "HardSigmoid")
_ACTS = _FUSED_CONV_ACTS + ("HardSwish",)


def _act_pattern(act: str, conv: Op) -> Op:
    if act == "Clip":  # opset >= 11: bounds are inputs (Relu6 is Clip(0, 6))
        return Op("Clip", conv, Const("lo"), Const("hi"), name="act")
    return Op(act, conv, name="act")


class ConvActivation(Rule):
    """Act(Conv(x, W[, B])) -> com.microsoft.FusedConv(x, W[, B], activation=Act)."""

    name = "conv_activation"
    kind = "conv_act"
    patterns = tuple(
        _act_pattern(act, Op("Conv", Var("x"), Var("w"), *([Var("b")] if nb else []),
                             name="conv"))
        for act in _ACTS for nb in (True, False))
    candidates = (("com.microsoft", "FusedConv", 0),)

    def check(self, m: Match, ctx) -> str | None:
        if m.named["act"].op_type == "Clip" and (
                m.consts["lo"].size != 1 or m.consts["hi"].size != 1):
            return "Clip bounds are not scalars"
        return None

    def choose(self, m: Match, graph, ctx) -> tuple[str, str] | None:
        if m.named["act"].op_type not in _FUSED_CONV_ACTS:
            return None  # no fused form: recorded as one kernel
        return super().choose(m, graph, ctx)

    def rewrite(self, m: Match, graph, op) -> None:
        conv, act = m.named["conv"], m.named["act"]
        ins = [m["x"], m["w"]] + ([m["b"]] if "b" in m.values else [])
        new = emit(graph, act, "FusedConv", ins, domain="com.microsoft",
                   attrs={"activation": act.op_type}, hint="FusedConv")
        for k, a in conv.attrs.items():
            new.attrs[k] = a
        params = {"LeakyRelu": lambda: [float(act.attr("alpha", 0.01))],
                  "HardSigmoid": lambda: [float(act.attr("alpha", 0.2)),
                                          float(act.attr("beta", 0.5))],
                  "Clip": lambda: [float(m.consts["lo"].reshape(-1)[0]),
                                   float(m.consts["hi"].reshape(-1)[0])]}.get(act.op_type)
        if params is not None:
            new.set_attr("activation_params", params())
        finish(m, graph, new.outputs[0])


class SiLU(Rule):
    """x · Sigmoid(x) (SiLU / Swish) -> com.microsoft.QuickGelu(x, alpha=1), since
    QuickGelu(x) = x · σ(alpha · x); a "silu" group when not accepted."""

    name = "silu"
    kind = "silu"
    patterns = (Op("Mul", Var("x"), Op("Sigmoid", Var("x"), name="sig"), name="mul"),)
    candidates = (("com.microsoft", "QuickGelu", 0),)

    def rewrite(self, m: Match, graph, op) -> None:
        new = emit(graph, m.anchor, "QuickGelu", [m["x"]], domain="com.microsoft",
                   attrs={"alpha": 1.0}, hint="SiLU")
        finish(m, graph, new.outputs[0])


RULE_SET = RuleSet("activation", [GeluErf(), GeluTanh(), SiLU()])
EPILOGUE_RULE_SET = RuleSet("epilogue", [BiasGelu(), ConvActivation()])
