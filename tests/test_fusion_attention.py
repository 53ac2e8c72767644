"""Attention fusion: MultiHeadAttention for ONNX Runtime, ONNX Attention at opset 23, a fusion
group when the backend takes neither, and refusals (mask shapes the fused op cannot take)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper as h

from tests.test_fusion_rules import RNG, assert_same, fuse, model, ops

B, S, H, D = 2, 5, 4, 8
E = H * D


def _mha(mask_shape: list[int] | None = None, two_k_transposes: bool = False,
         div_scale: bool = False) -> onnx.ModelProto:
    nodes, inits = [], {"heads": np.array([0, 0, H, D], np.int64),
                        "merged": np.array([0, 0, -1], np.int64)}
    for x in "qkv":
        inits[f"w{x}"] = RNG.standard_normal((E, E)) / np.sqrt(E)
        inits[f"b{x}"] = RNG.standard_normal(E)
        nodes += [h.make_node("MatMul", ["x", f"w{x}"], [f"{x}m"]),
                  h.make_node("Add", [f"{x}m", f"b{x}"], [f"{x}3"]),
                  h.make_node("Reshape", [f"{x}3", "heads"], [f"{x}r"])]
    nodes.append(h.make_node("Transpose", ["qr"], ["q4"], perm=[0, 2, 1, 3]))
    nodes.append(h.make_node("Transpose", ["vr"], ["v4"], perm=[0, 2, 1, 3]))
    if two_k_transposes:
        nodes += [h.make_node("Transpose", ["kr"], ["k4"], perm=[0, 2, 1, 3]),
                  h.make_node("Transpose", ["k4"], ["kt"], perm=[0, 1, 3, 2])]
    else:
        nodes.append(h.make_node("Transpose", ["kr"], ["kt"], perm=[0, 2, 3, 1]))
    nodes.append(h.make_node("MatMul", ["q4", "kt"], ["s"]))
    if div_scale:
        inits["scale"] = np.float32(np.sqrt(D))
        nodes.append(h.make_node("Div", ["s", "scale"], ["ss"]))
    else:
        inits["scale"] = np.float32(1 / np.sqrt(D))
        nodes.append(h.make_node("Mul", ["scale", "s"], ["ss"]))
    inputs = [("x", [B, S, E])]
    if mask_shape is not None:
        inputs.append(("mask", mask_shape))
        nodes.append(h.make_node("Add", ["ss", "mask"], ["sm"]))
    else:
        nodes.append(h.make_node("Identity", ["ss"], ["sm"]))
    nodes += [h.make_node("Softmax", ["sm"], ["p"], axis=-1),
              h.make_node("MatMul", ["p", "v4"], ["o4"]),
              h.make_node("Transpose", ["o4"], ["ot"], perm=[0, 2, 1, 3]),
              h.make_node("Reshape", ["ot", "merged"], ["y"])]
    if mask_shape is None:  # keep the graph free of the Identity: rewire Softmax to read ss
        nodes = [n for n in nodes if n.op_type != "Identity"]
        for n in nodes:
            n.input[:] = ["ss" if i == "sm" else i for i in n.input]
    return model(nodes, inputs, [("y", [B, S, E])], inits)


def test_mha_for_onnxruntime():
    for kw in ({}, {"two_k_transposes": True}, {"div_scale": True},
               {"mask_shape": [1, 1, S, S]}, {"mask_shape": [B, H, S, S]},
               {"mask_shape": [S, S]}):
        m = _mha(**kw)
        g, stats, out = fuse(m)
        c = ops(g)
        assert c["MultiHeadAttention"] == 1 and "Softmax" not in c and "Transpose" not in c, kw
        mha = next(n for n in g if n.op_type == "MultiHeadAttention")
        assert mha.domain == "com.microsoft" and mha.attr("num_heads") == H
        assert_same(m, out)


def test_attention_without_backend_is_one_group():
    m = _mha(mask_shape=[1, 1, S, S])
    g, stats, out = fuse(m, backend=None)
    c = ops(g)
    assert c["Softmax"] == 1 and "MultiHeadAttention" not in c
    groups = {}
    for n in g:
        fg = n.meta.get("fusion_group")
        if fg and fg["kind"] == "attention":
            groups.setdefault(fg["id"], []).append(n.op_type)
    (members,) = groups.values()
    assert sorted(members).count("Transpose") == 4 and "Softmax" in members
    assert stats["rules"]["attention_mha"]["grouped"] == 1
    assert_same(m, out)


def test_mask_shape_the_fused_op_cannot_take_is_refused():
    m = _mha(mask_shape=[B, 1, S, 1])  # broadcast along the key axis: not an attention_bias
    g, stats, out = fuse(m)
    assert "MultiHeadAttention" not in ops(g) and ops(g)["Softmax"] == 1
    assert stats["rules"]["attention_mha"]["refused"] == {
        "mask shape not accepted by the fused op": 1}
    assert_same(m, out)


def test_softmax_over_another_axis_is_refused():
    m = _mha()
    next(n for n in m.graph.node if n.op_type == "Softmax").attribute[0].i = 2
    g, stats, out = fuse(m)
    assert "MultiHeadAttention" not in ops(g)
    assert stats["rules"]["attention_mha"]["refused"] == {"Softmax is not over the last axis": 1}
    assert_same(m, out)


def test_core_attention_becomes_onnx_attention_at_opset_23():
    nodes = [h.make_node("Transpose", ["k"], ["kt"], perm=[0, 1, 3, 2]),
             h.make_node("MatMul", ["q", "kt"], ["s"]),
             h.make_node("Mul", ["s", "scale"], ["ss"]),
             h.make_node("Softmax", ["ss"], ["p"], axis=-1),
             h.make_node("MatMul", ["p", "v"], ["y"])]
    shp = [B, H, S, D]
    m = model(nodes, [("q", shp), ("k", shp), ("v", shp)], [("y", shp)],
              {"scale": np.float32(0.3)}, opset=23)
    g, stats, out = fuse(m)
    assert ops(g) == {"Attention": 1}, ops(g)
    assert_same(m, out)
