"""Import normalization (passes/normalize.py) and the model variants it must hold on:
negative and unnamed dims, weights in Constant nodes, computed Reshape shapes, unknown shapes
in the cost model; the zoo CNN at other opsets and from the other exporters."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import compiler
from compiler import zoo
from compiler.cli import main
from compiler.cost import predict
from compiler.driver import load_graph
from compiler.onnx_io import export_onnx, import_onnx
from compiler.zoo.outside_variants import (
    VariantUnavailable,
    has_negative_dims,
    paddle_style,
    variant,
)
from targets.devices import get_profile
from tests.helpers import const, make_model, run_ort


def _paddle_mlp() -> onnx.ModelProto:
    """x [batch?, 8] -> MatMul(w) + b -> Relu -> Reshape(to [batch, 2, 2]), dims unnamed."""
    rng = np.random.default_rng(0)
    nodes = [h.make_node("MatMul", ["x", "w"], ["m"]), h.make_node("Add", ["m", "b"], ["a"]),
             h.make_node("Relu", ["a"], ["r"]), h.make_node("Reshape", ["r", "s"], ["y"])]
    x = h.make_tensor_value_info("x", T.FLOAT, [None, 8])
    y = h.make_tensor_value_info("y", T.FLOAT, [None, 2, 2])
    m = make_model(nodes, [x], [y], [const(rng.standard_normal((8, 4)), "w", np.float32),
                                     const(rng.standard_normal(4), "b", np.float32),
                                     const([0, 2, 2], "s", np.int64)])
    return paddle_style(m)


def test_paddle_style_rewrite_is_what_paddle2onnx_writes() -> None:
    m = _paddle_mlp()
    assert not m.graph.initializer and has_negative_dims(m)
    ops = [n.op_type for n in m.graph.node]
    assert ops.count("Constant") >= 3 and {"Shape", "Gather", "Concat"} <= set(ops)
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    assert run_ort(m, {"x": x})["y"].shape == (3, 2, 2)


def test_negative_and_unnamed_dims_become_unique_symbols() -> None:
    two = make_model([h.make_node("Add", ["a", "b"], ["y"])],
                     [h.make_tensor_value_info("a", T.FLOAT, [None, None]),
                      h.make_tensor_value_info("b", T.FLOAT, [None, None])],
                     [h.make_tensor_value_info("y", T.FLOAT, [None, None])])
    g = load_graph(two)
    syms = [d for v in g.inputs for d in v.shape]
    assert all(isinstance(d, str) for d in syms) and len(set(syms)) == 4
    g = load_graph(_paddle_mlp())  # dim_value -1: was "absurd dimension -1"
    (x,) = [v for v in g.inputs if v.const is None]
    assert x.shape == ("x_d0", 8)
    # the plain importer stays lossless: the unknown dim is read, not renamed
    assert import_onnx(_paddle_mlp()).inputs[0].shape == (None, 8)


def test_constants_become_initializers_and_shapes_propagate() -> None:
    g = load_graph(_paddle_mlp())
    assert not [n for n in g if n.op_type == "Constant"]
    assert {"w", "b"} <= set(g.initializers)
    flatten, reshape = [n for n in g if n.op_type == "Reshape"]
    # through Shape -> Gather -> Concat, both the explicit flatten and the final Reshape
    assert flatten.outputs[0].shape == ("x_d0", 8)
    assert reshape.outputs[0].shape == ("x_d0", 2, 2)
    x = np.random.default_rng(2).standard_normal((5, 8)).astype(np.float32)
    ref = run_ort(_paddle_mlp(), {"x": x})["y"]
    assert np.array_equal(run_ort(export_onnx(g), {"x": x})["y"], ref)


def test_inspect_of_paddle_style_model_counts_the_same_parameters_and_flops(
        tmp_path, capsys) -> None:
    original = zoo.get("cnn")
    paddle = variant(original, "paddle")
    docs = []
    for path in (original, paddle):
        assert main(["inspect", str(path), "--json", "--shape", "pixel_values=1x3x64x64"]) == 0
        docs.append(json.loads(capsys.readouterr().out))
    assert docs[0]["parameters"] == docs[1]["parameters"] > 500_000
    assert docs[0]["flops"] == docs[1]["flops"] > 1e7
    assert docs[1]["inputs"][0]["shape"][1:2] == [3]


def test_unknown_shapes_are_assumed_and_widen_uncertainty_never_free() -> None:
    """A Reshape to a shape read from an input leaves its output's rank unknown; the Relu
    after it is still costed (its input's producer's largest input), and the prediction says
    so and trusts itself less than for the same graph with the shape known."""
    nodes = [h.make_node("Reshape", ["x", "s"], ["r"]), h.make_node("Relu", ["r"], ["y"])]
    unknown = make_model(nodes, [h.make_tensor_value_info("x", T.FLOAT, [64, 256]),
                                 h.make_tensor_value_info("s", T.INT64, [None])],
                         [h.make_tensor_value_info("y", T.FLOAT, None)])
    known = make_model(nodes, [h.make_tensor_value_info("x", T.FLOAT, [64, 256])],
                       [h.make_tensor_value_info("y", T.FLOAT, [128, 128])],
                       [const([128, 128], "s", np.int64)])
    profile = get_profile("host")
    cfg = {"backend": "onnxruntime", "precision": "fp32", "fusion": True}
    pu, pk = (predict(load_graph(m), cfg, profile) for m in (unknown, known))
    assert any("shapes unknown" in a for a in pu.assumptions)
    assert not any("shapes unknown" in a for a in pk.assumptions)
    assert pu.uncertainty > pk.uncertainty
    relu = [k for k in pu.nodes if "Relu" in k["ops"]]
    assert relu and relu[0]["bytes"] > 0  # not free


@pytest.mark.parametrize("kind", ["paddle", "opset21", "torchscript9", "torchscript11",
                                  "torchscript13", "torchscript17",
                                  pytest.param("dynamo", marks=pytest.mark.slow)])
def test_zoo_cnn_variants_compute_the_same_and_compile(kind: str) -> None:
    pytest.importorskip("torch")
    src = None if kind.startswith("torchscript") or kind == "dynamo" else zoo.get("cnn")
    path = variant(src, kind)
    model = onnx.load(str(path))
    opset = {o.domain: o.version for o in model.opset_import}[""]
    if kind.startswith(("opset", "torchscript")):
        assert opset == int(kind.removeprefix("opset").removeprefix("torchscript"))
    feeds = zoo.example_inputs("cnn", batch=2)
    ref = run_ort(onnx.load(str(zoo.get("cnn"))), feeds)["logits"]
    got = run_ort(model, feeds)["logits"]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-5)
    art = compiler.compile(str(path), backend="onnxruntime", precision="fp32",
                           example_inputs=feeds)
    assert art.verification["passed"] is True


def test_version_converter_refusal_is_reported() -> None:
    """onnx's converter has no down-adapter for BatchNormalization-15: the variant says so."""
    with pytest.raises(VariantUnavailable, match="BatchNormalization"):
        variant(zoo.get("cnn"), "opset11")


def test_bound_input_sizes_resolve_computed_shapes_for_the_cost_model() -> None:
    """Magika (tf2onnx) computes shapes from its batch dim (Shape -> Concat -> Expand): the
    shapes stay unknown symbolically, and are inferred once the batch is bound; the graph
    itself keeps its dynamic shapes."""
    from compiler.zoo import outside

    if outside.skip_reason("magika"):
        pytest.skip(outside.skip_reason("magika"))
    g = load_graph(str(outside.path("magika")))
    cfg = {"backend": "onnxruntime", "precision": "fp32", "fusion": True}
    free = predict(g, cfg, get_profile("host"))
    before = {o.name: o.shape for n in g.all_nodes() for o in n.outputs}
    bound = predict(g, cfg, get_profile("host"), bindings={"unk__214": 1})
    assert any("shapes unknown" in a for a in free.assumptions)
    assert not any("shapes unknown" in a for a in bound.assumptions)
    assert any("inferred for the bound dims only" in a for a in bound.assumptions)
    assert bound.uncertainty < free.uncertainty
    assert {o.name: o.shape for n in g.all_nodes() for o in n.outputs} == before


def test_control_flow_bodies_are_costed() -> None:
    """A model held inside an If (silero-vad's form) costs what its costlier branch costs,
    not one free node."""
    w = const(np.random.default_rng(3).standard_normal((512, 512)), "w", np.float32)
    x = h.make_tensor_value_info("x", T.FLOAT, [256, 512])
    y = h.make_tensor_value_info("y", T.FLOAT, [256, 512])
    plain = make_model([h.make_node("MatMul", ["x", "w"], ["y"])], [x], [y], [w])
    then = h.make_graph([h.make_node("MatMul", ["x", "w"], ["t"])], "then", [],
                        [h.make_tensor_value_info("t", T.FLOAT, [256, 512])])
    other = h.make_graph([h.make_node("Relu", ["x"], ["e"])], "else", [],
                         [h.make_tensor_value_info("e", T.FLOAT, [256, 512])])
    branchy = make_model([h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
                         [x, h.make_tensor_value_info("c", T.BOOL, [])], [y], [w])
    cfg = {"backend": "onnxruntime", "precision": "fp32", "fusion": True}
    pp, pb = (predict(load_graph(m), cfg, get_profile("host")) for m in (plain, branchy))
    assert pb.latency_ms >= 0.8 * pp.latency_ms
    assert any("costlier branch" in a for a in pb.assumptions)
