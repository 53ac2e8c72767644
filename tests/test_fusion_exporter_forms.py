"""Attention and layer-norm fusion on the forms other exporters write (one test per form):
torch.onnx TorchScript SDPA and dynamo/torchlib (√scale on Q and on Kᵀ), transformers eager
(scale after Q·Kᵀ, softmax in float32), optimum (Div by √D, additive mask), tf2onnx's affine
layer norm, paddle2onnx's primitive layer norm, torch's rsqrt as Pow(·, −0.5). Structure and
numerics against ONNX Runtime on the unfused model."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

from tests.test_fusion_rules import RNG, assert_same, fuse, model, ops

B, S, H, D = 2, 5, 4, 8
E = H * D


def _heads(x: str, perm: list[int]) -> list[onnx.NodeProto]:
    return [h.make_node("MatMul", ["x", f"w{x}"], [f"{x}m"]),
            h.make_node("Add", [f"{x}m", f"b{x}"], [f"{x}3"]),
            h.make_node("Reshape", [f"{x}3", "heads"], [f"{x}r"]),
            h.make_node("Transpose", [f"{x}r"], [f"{x}4"], perm=perm)]


def _block(form: str) -> onnx.ModelProto:
    """One multi-head attention block as `form` writes it, from x [B, S, E] to y [B, S, E]."""
    inits = {"heads": np.array([0, 0, H, D], np.int64), "merged": np.array([0, 0, -1], np.int64)}
    for x in "qkv":
        inits[f"w{x}"] = RNG.standard_normal((E, E)) / np.sqrt(E)
        inits[f"b{x}"] = RNG.standard_normal(E)
    nodes = _heads("q", [0, 2, 1, 3]) + _heads("k", [0, 2, 1, 3]) + _heads("v", [0, 2, 1, 3])
    inputs = [("x", [B, S, E])]
    scale = 1 / np.sqrt(D)
    if form == "dynamo_sdpa_3d":
        # torchlib's K transpose on rank 4: Reshape [B*H, S, D], Transpose(0,2,1), Reshape back
        inits.update(sq=np.float32(np.sqrt(scale)), k3d_shape=np.array([B * H, S, D], np.int64),
                     kt4_shape=np.array([B, H, D, S], np.int64))
        nodes += [h.make_node("Mul", ["q4", "sq"], ["qs"]),
                  h.make_node("Reshape", ["k4", "k3d_shape"], ["k3d"]),
                  h.make_node("Transpose", ["k3d"], ["k3t"], perm=[0, 2, 1]),
                  h.make_node("Reshape", ["k3t", "kt4_shape"], ["kt"]),
                  h.make_node("Mul", ["kt", "sq"], ["ks"]),
                  h.make_node("MatMul", ["qs", "ks"], ["sm"])]
    elif form in ("torchscript_sdpa", "dynamo_sdpa"):
        # symbolic_opset14 / torchlib: Q·√s, Transpose(K, [0,1,3,2])·√s, no scale afterwards
        inits["sq"] = np.float32(np.sqrt(scale))
        inits["sk"] = np.float32(np.sqrt(scale)) if form == "torchscript_sdpa" else \
            np.full((1,), np.sqrt(scale), np.float32)
        nodes += [h.make_node("Mul", ["q4", "sq"], ["qs"]),
                  h.make_node("Transpose", ["k4"], ["kt"], perm=[0, 1, 3, 2]),
                  h.make_node("Mul", ["kt", "sk"], ["ks"]) if form == "torchscript_sdpa" else
                  h.make_node("Mul", ["sk", "kt"], ["ks"]),
                  h.make_node("MatMul", ["qs", "ks"], ["sm"])]
    elif form == "transformers_eager":
        # matmul(q, k.transpose(2, 3)) * scaling; softmax(dim=-1, dtype=float32)
        inits["scale"] = np.float32(scale)
        nodes += [h.make_node("Transpose", ["k4"], ["kt"], perm=[0, 1, 3, 2]),
                  h.make_node("MatMul", ["q4", "kt"], ["s"]),
                  h.make_node("Mul", ["s", "scale"], ["ss"]),
                  h.make_node("Cast", ["ss"], ["sm"], to=T.FLOAT)]
    elif form == "optimum":
        # BERT-style: Div by √D, then the extended additive mask (1 - m) * finfo.min
        inits["sqrt_d"] = np.float32(np.sqrt(D))
        inputs.append(("mask", [B, 1, 1, S]))
        nodes += [h.make_node("Transpose", ["k4"], ["kt"], perm=[0, 1, 3, 2]),
                  h.make_node("MatMul", ["q4", "kt"], ["s"]),
                  h.make_node("Div", ["s", "sqrt_d"], ["ss"]),
                  h.make_node("Add", ["ss", "mask"], ["sm"])]
    else:
        raise ValueError(form)
    nodes += [h.make_node("Softmax", ["sm"], ["p"], axis=-1),
              h.make_node("MatMul", ["p", "v4"], ["o4"]),
              h.make_node("Transpose", ["o4"], ["ot"], perm=[0, 2, 1, 3]),
              h.make_node("Reshape", ["ot", "merged"], ["y"])]
    return model(nodes, inputs, [("y", [B, S, E])], inits)


@pytest.mark.parametrize("form", ["torchscript_sdpa", "dynamo_sdpa", "dynamo_sdpa_3d",
                                  "transformers_eager", "optimum"])
def test_exporter_attention_form_becomes_multiheadattention(form):
    m = _block(form)
    g, stats, out = fuse(m)
    c = ops(g)
    assert c["MultiHeadAttention"] == 1 and "Softmax" not in c and "Transpose" not in c, (form, c)
    mha = next(n for n in g if n.op_type == "MultiHeadAttention")
    assert mha.attr("num_heads") == H
    assert mha.attr("scale") == pytest.approx(1 / np.sqrt(D), rel=1e-6)
    assert_same(m, out)


def test_sdpa_scales_that_are_not_scalars_are_refused():
    """√scale as a per-element tensor (not one number) is not a scale the fused op takes."""
    m = _block("torchscript_sdpa")
    sq = next(i for i in m.graph.initializer if i.name == "sq")
    sq.CopyFrom(onnx.numpy_helper.from_array(RNG.random((1, 1, 1, D)).astype(np.float32), "sq"))
    g, stats, out = fuse(m)
    assert "MultiHeadAttention" not in ops(g)
    assert_same(m, out)


def _ln(form: str) -> onnx.ModelProto:
    C = 16
    inits = {"eps": np.float32(1e-5), "gamma": RNG.standard_normal(C),
             "beta": RNG.standard_normal(C), "two": np.float32(2.0),
             "minus_half": np.float32(-0.5), "axes": np.array([-1], np.int64)}
    rm = {"axes": [-1]}
    opset = 17
    if form == "paddle2onnx":  # opset 18: ReduceMean takes axes as an input; Pow(d, 2)
        opset = 18
        mean = h.make_node("ReduceMean", ["x", "axes"], ["mu"], keepdims=1)
        var = h.make_node("ReduceMean", ["sq", "axes"], ["var"], keepdims=1)
    else:
        mean = h.make_node("ReduceMean", ["x"], ["mu"], keepdims=1, **rm)
        var = h.make_node("ReduceMean", ["sq"], ["var"], keepdims=1, **rm)
    nodes = [mean, h.make_node("Sub", ["x", "mu"], ["d"])]
    nodes.append(h.make_node("Pow", ["d", "two"], ["sq"]) if form != "tf2onnx" else
                 h.make_node("Mul", ["d", "d"], ["sq"]))
    nodes += [var, h.make_node("Add", ["var", "eps"], ["ve"])]
    if form == "paddle2onnx":
        nodes += [h.make_node("Sqrt", ["ve"], ["sd"]), h.make_node("Div", ["d", "sd"], ["n"]),
                  h.make_node("Mul", ["n", "gamma"], ["ng"]),
                  h.make_node("Add", ["ng", "beta"], ["y"])]
    elif form == "rsqrt_pow":  # d · (σ² + ε)^−0.5 · γ + β
        nodes += [h.make_node("Pow", ["ve", "minus_half"], ["r"]),
                  h.make_node("Mul", ["d", "r"], ["n"]),
                  h.make_node("Mul", ["n", "gamma"], ["ng"]),
                  h.make_node("Add", ["ng", "beta"], ["y"])]
    elif form in ("tf2onnx", "tf2onnx_no_beta"):  # a = γ·rsqrt; y = x·a + (β − μ·a)
        nodes += [h.make_node("Sqrt", ["ve"], ["sd"]), h.make_node("Reciprocal", ["sd"], ["r"]),
                  h.make_node("Mul", ["r", "gamma"], ["a"]),
                  h.make_node("Mul", ["x", "a"], ["xa"]),
                  h.make_node("Mul", ["mu", "a"], ["ma"])]
        nodes += [h.make_node("Sub", ["beta", "ma"], ["bm"]),
                  h.make_node("Add", ["xa", "bm"], ["y"])] if form == "tf2onnx" else \
            [h.make_node("Sub", ["xa", "ma"], ["y"])]
    else:
        raise ValueError(form)
    return model(nodes, [("x", [2, 3, C])], [("y", [2, 3, C])], inits, opset=opset)


@pytest.mark.parametrize("form", ["paddle2onnx", "rsqrt_pow", "tf2onnx", "tf2onnx_no_beta"])
def test_exporter_layernorm_form_becomes_layernormalization(form):
    m = _ln(form)
    g, stats, out = fuse(m)
    assert ops(g) == {"LayerNormalization": 1}, (form, ops(g))
    ln = next(iter(g))
    assert ln.attr("epsilon") == pytest.approx(1e-5)
    assert_same(m, out)


def test_tf2onnx_form_with_mean_and_x_scaled_differently_is_refused():
    m = _ln("tf2onnx")
    node = next(n for n in m.graph.node if n.output[0] == "ma")
    node.input[:] = ["mu", "r"]  # μ·r instead of μ·γ·r: not a layer norm
    g, stats, out = fuse(m)
    assert "LayerNormalization" not in ops(g)
    assert_same(m, out)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["siglip_sdpa_torchscript", "siglip_sdpa_dynamo"])
def test_siglip_b16_from_both_torch_exporters_fuses_its_12_attention_blocks(name):
    """SigLIP-B/16 (transformers' config, random weights, sdpa attention) as torch.onnx's
    TorchScript and dynamo exporters write it: the fusion pipeline turns all 12 encoder
    attention blocks into MultiHeadAttention, and the outputs stay within fp32 tolerance."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    if name.endswith("dynamo"):
        pytest.importorskip("onnxscript")
    import compiler
    from compiler import zoo
    from compiler.onnx_io import export_onnx
    from compiler.verify import TOLERANCES, compare
    from compiler.zoo.exporters import BATCH
    from tests.test_fusion_rules import run_ort

    path = zoo.get(name)
    g = compiler.optimize(str(path), pipeline="fusion", backend="onnxruntime")
    mha = [n for n in g if n.op_type == "MultiHeadAttention"]
    assert len(mha) >= 12, ops(g)
    assert {n.attr("num_heads") for n in mha[:12]} == {12}
    assert all(n.attr("scale") == pytest.approx(64 ** -0.5, rel=1e-5) for n in mha[:12])
    x = {"pixel_values": RNG.standard_normal((BATCH, 3, 224, 224)).astype(np.float32)}
    original = onnx.load(str(path))
    names = [o.name for o in original.graph.output]
    ref = dict(zip(names, run_ort(original, x)))
    fused = export_onnx(g)
    got = dict(zip([o.name for o in fused.graph.output], run_ort(fused, x)))
    rep = compare(ref, got, TOLERANCES["fp32"])
    assert rep.passed, rep
