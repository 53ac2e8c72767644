"""Scaled dot-product attention from MatMul / scale / [mask] / Softmax / MatMul.

    scores = ((Q·a)·(Kᵀ·b))·s     s from Mul(c) (s = c) or Div(c) (s = 1/c), else s = 1
    P      = softmax(scores + M)  over the last axis; M an optional additive mask
    O      = P·V
with Q [B, H, S, D], Kᵀ [B, H, D, L], V [B, H, L, D]; the scale is a·b·s. a and b (optional
constant scalars) are the form torch.onnx's TorchScript exporter (SDPA) and the dynamo exporter
(torchlib) write: √scale applied to Q and to Kᵀ separately, so that Q·Kᵀ never overflows in
half precision (transformers 5's SigLIP/CLIP/ViT with attn_implementation="sdpa"); eager
transformers and optimum write s after the MatMul (Mul, or Div by √D). No-op Casts (to the same
dtype) before Softmax (transformers' softmax(dtype=float32)) and between Softmax and the second
MatMul are allowed.

Two rules, tried in this order:

- `attention_mha`: the whole multi-head block as exporters write it, from the projections
  q, k, v in [B, S, H·D] layout: Reshape to [B, S, H, D], Transpose to heads-first (Kᵀ by one
  Transpose(0,2,3,1) or two), the core above, Transpose(0,2,1,3), Reshape to [B, S, H·D].
  Becomes `com.microsoft.MultiHeadAttention(q, k, v, attention_bias=M, num_heads=H, scale=s)`.
  Conditions: H and D are known (from the Reshape targets or inferred shapes) and equal for q,
  k and v; the final Reshape gives [B, S, H·D]; M, when present, has shape [B|1, H|1, S, L]
  (rank 2 [S, L] is unsqueezed; a key-padding mask [B|1, 1, 1, L] is expanded over the S
  query rows when S is known), since that is all the op's attention_bias takes.
- `attention`: the core alone. Becomes ONNX `Attention` (opset ≥ 23; K is transposed back with
  a Transpose(0,1,3,2) that transpose cancellation then folds). Otherwise, and whenever the
  backend accepts neither op, the matched nodes are recorded as one "attention" fusion group.
"""

from __future__ import annotations

import numpy as np

from passes.rewrite import (
    Alt,
    Const,
    Match,
    Op,
    Opt,
    Rule,
    RuleSet,
    Var,
    const_array,
    emit,
    finish,
    scalar,
    shape_of,
)

__all__ = ["AttentionMHA", "AttentionCore", "RULE_SET"]

_HEADS = [0, 2, 1, 3]


def _core(q4, kt, v4) -> Op:
    q = Alt(Op("Mul", q4, Const("q_scale"), name="q_scale"), q4)
    k = Alt(Op("Mul", kt, Const("k_scale"), name="k_scale"), kt)
    scores = Op("MatMul", q, k, name="qk")
    scaled = Alt(Op("Mul", scores, Const("scale"), name="scale"),
                 Op("Div", scores, Const("scale_div"), name="scale"), scores)
    masked = Alt(Op("Add", scaled, Var("mask"), name="mask_add"), scaled)
    probs = Op("Softmax", Opt("Cast", masked, name="cast0"), name="softmax")
    probs = Opt("Cast", Opt("Cast", probs, name="cast1"), name="cast2")
    return Op("MatMul", probs, v4, name="pv")


def _split_heads(x: str) -> Op:
    return Op("Reshape", Var(x), Var(f"{x}_shape"), name=f"{x}_reshape")


def _mha_patterns() -> tuple[Op, ...]:
    q4 = Op("Transpose", _split_heads("q"), attrs={"perm": _HEADS}, name="q_t")
    v4 = Op("Transpose", _split_heads("v"), attrs={"perm": _HEADS}, name="v_t")
    k4 = Op("Transpose", _split_heads("k"), attrs={"perm": _HEADS}, name="k_t0")
    # Kᵀ by one Transpose, by two, or (torchlib, dynamo exporter) as Reshape to [B·H, L, D],
    # Transpose(0, 2, 1), Reshape back to [B, H, D, L]
    kt = Alt(Op("Transpose", _split_heads("k"), attrs={"perm": [0, 2, 3, 1]}, name="k_t"),
             Op("Transpose", k4, attrs={"perm": [0, 1, 3, 2]}, name="k_t"),
             Op("Reshape", Op("Transpose", Op("Reshape", k4, Var("k3_shape"), name="k_3d"),
                              attrs={"perm": [0, 2, 1]}, name="k_t3"), Var("kt_shape"),
                name="k_t"))
    merged = Op("Transpose", _core(q4, kt, v4), attrs={"perm": _HEADS}, name="o_t")
    return (Op("Reshape", merged, Var("o_shape"), name="o_reshape"),)


def _target_dims(shape_value) -> list[int | None] | None:
    """The entries of a Reshape target: constant, or a Concat of pieces some of them constant."""
    arr = const_array(shape_value)
    if arr is not None:
        return [int(d) for d in arr.reshape(-1)]
    p = shape_value.producer
    if p is None or p.op_type != "Concat":
        return None
    dims: list[int | None] = []
    for v in p.inputs:
        c = const_array(v)
        if c is not None:
            dims.extend(int(d) for d in c.reshape(-1))
        else:
            s = shape_of(v)
            if s is None or len(s) != 1 or not isinstance(s[0], int):
                return None
            dims.extend([None] * s[0])
    return dims


def _scale(m: Match) -> float | None:
    """a·b·s (module docstring); None when one of them is not a constant scalar."""
    s = 1.0
    if "scale" in m.consts:
        s = scalar(m.consts["scale"])
    elif "scale_div" in m.consts:
        c = scalar(m.consts["scale_div"])
        s = None if not c else 1.0 / c
    for k in ("q_scale", "k_scale"):
        if s is not None and k in m.consts:
            c = scalar(m.consts[k])
            s = None if c is None or m.consts[k].size != 1 else s * c
    return s


def _softmax_last(m: Match) -> bool:
    sm = m.named["softmax"]
    axis = sm.attr("axis", -1)
    rank = len(s) if (s := shape_of(sm.outputs[0])) is not None else 4
    return axis in (-1, rank - 1)


def _casts_ok(m: Match) -> bool:
    dt = m.named["softmax"].outputs[0].dtype
    if "cast0" in m.named and m.named["cast0"].attr("to") != m.named["cast0"].inputs[0].dtype:
        return False
    return all(m.named[c].attr("to") == dt and dt is not None
               for c in ("cast1", "cast2") if c in m.named)


class AttentionMHA(Rule):
    """Reshape/Transpose/MatMul/Mul/[Add]/Softmax/MatMul/Transpose/Reshape ->
    com.microsoft.MultiHeadAttention."""

    name = "attention_mha"
    kind = "attention"
    patterns = _mha_patterns()
    candidates = (("com.microsoft", "MultiHeadAttention", 0),)

    def check(self, m: Match, ctx) -> str | None:
        if not _softmax_last(m):
            return "Softmax is not over the last axis"
        if not _casts_ok(m):
            return "Cast changes the dtype inside the pattern"
        scale = _scale(m)
        if scale is None:
            return "scale is not a constant scalar"
        heads = set()
        for x in ("q", "k", "v"):
            dims = _target_dims(m[f"{x}_shape"])
            out = shape_of(m.named[f"{x}_reshape"].outputs[0])
            if dims is None or len(dims) != 4:
                return "head split is not a Reshape to rank 4"
            h, d = dims[2], dims[3]
            xs = shape_of(m[x])
            hidden = xs[-1] if xs and isinstance(xs[-1], int) else None
            if h == -1 and d is not None and d > 0 and hidden and hidden % d == 0:
                h = hidden // d
            if d == -1 and h is not None and h > 0 and hidden and hidden % h == 0:
                d = hidden // h
            if (h is None or h <= 0 or d is None or d <= 0) and out is not None and len(out) == 4:
                h, d = out[2], out[3]
            if not isinstance(h, int) or not isinstance(d, int) or h <= 0 or d <= 0:
                return "number of heads or head size unknown"
            xs = shape_of(m[x])
            if xs is not None and (len(xs) != 3 or (isinstance(xs[2], int) and xs[2] != h * d)):
                return "projection is not [batch, sequence, heads*head_size]"
            heads.add((h, d))
        if len(heads) != 1:
            return "q, k and v head layouts differ"
        (h, d), = heads
        if "k_t3" in m.named:  # the 3-d transpose must give back [B, H, D, L]
            kt = shape_of(m.named["k_t"].outputs[0])
            if kt is None or len(kt) != 4 or kt[1] != h or kt[2] != d:
                return "Kᵀ through a 3-d Transpose is not [batch, heads, head_size, length]"
        odims = _target_dims(m["o_shape"])
        qs = shape_of(m["q"]) or (None, None)
        # batch and sequence copied (0), computed (None) or the constants a static export
        # writes (transformers' reshape(*input_shape, -1) at a fixed batch)
        if odims is None or len(odims) != 3 or odims[2] not in (-1, h * d) or any(
                v not in (None, 0) and v != q for v, q in zip(odims[:2], qs[:2])):
            return "head merge is not a Reshape to [batch, sequence, heads*head_size]"
        m.extra.update(num_heads=h, head_size=d, scale=scale)
        if "mask" in m.values:
            return self._check_mask(m, h)
        return None

    def _check_mask(self, m: Match, h: int) -> str | None:
        ms = shape_of(m["mask"])
        sc = shape_of(m.named["qk"].outputs[0])
        if ms is None or sc is None or len(ms) not in (2, 4):
            return "mask shape not accepted by the fused op"
        # a key-padding mask [B, 1, 1, L] (optimum, BERT-style) broadcasts over the query rows;
        # the fused op's attention_bias takes [., ., S, L]: it is expanded when S is known
        rows_ok = ms[-2] == sc[-2] or (ms[-2] == 1 and isinstance(sc[-2], int))
        if not rows_ok or ms[-1] != sc[-1] or not all(isinstance(d, int) for d in ms[-2:]):
            return "mask shape not accepted by the fused op"
        if len(ms) == 4 and (ms[1] not in (1, h) or ms[0] not in (1, sc[0])):
            return "mask shape not accepted by the fused op"
        if m["mask"].dtype is not None and m["mask"].dtype != m.named["qk"].outputs[0].dtype:
            return "mask dtype differs from the scores"
        return None

    def rewrite(self, m: Match, graph, op) -> None:
        ins = [m["q"], m["k"], m["v"]]
        if "mask" in m.values:
            mask = m["mask"]
            ms, sc = shape_of(mask), shape_of(m.named["qk"].outputs[0])
            if len(ms) == 2:
                axes = graph.make_constant(np.array([0, 1], np.int64), "mask_axes")
                mask = emit(graph, m.anchor, "Unsqueeze", [mask, axes], hint="mask4d").outputs[0]
            if ms[-2] != sc[-2]:  # [., ., 1, L] -> [., ., S, L]
                rows = graph.make_constant(np.array([1, 1, sc[-2], 1], np.int64), "mask_rows")
                mask = emit(graph, m.anchor, "Expand", [mask, rows], hint="mask_rows").outputs[0]
            ins += [None, None, mask]
        new = emit(graph, m.anchor, "MultiHeadAttention", ins, domain=op[0], hint="MHA",
                   attrs={"num_heads": m.extra["num_heads"], "scale": float(m.extra["scale"])})
        finish(m, graph, new.outputs[0])


class AttentionCore(Rule):
    """MatMul/[scale]/[Add mask]/Softmax/MatMul on heads-first tensors -> ONNX Attention-23."""

    name = "attention"
    kind = "attention"
    patterns = (_core(Var("q4"), Var("kt"), Var("v4")),)
    candidates = (("", "Attention", 23),)

    def check(self, m: Match, ctx) -> str | None:
        if not _softmax_last(m):
            return "Softmax is not over the last axis"
        if not _casts_ok(m):
            return "Cast changes the dtype inside the pattern"
        if _scale(m) is None:
            return "scale is not a constant scalar"
        for x in ("q4", "kt", "v4"):
            s = shape_of(m[x])
            if s is None or len(s) != 4:
                return "operands are not rank-4 heads-first tensors"
        return None

    def rewrite(self, m: Match, graph, op) -> None:
        k = emit(graph, m.anchor, "Transpose", [m["kt"]], attrs={"perm": [0, 1, 3, 2]},
                 hint="k_heads").outputs[0]
        ins = [m["q4"], k, m["v4"]] + ([m["mask"]] if "mask" in m.values else [])
        new = emit(graph, m.anchor, "Attention", ins, hint="Attention",
                   attrs={"scale": float(_scale(m))})
        finish(m, graph, new.outputs[0])


RULE_SET = RuleSet("attention", [AttentionMHA(), AttentionCore()])
