"""Legality that is true: each backend asks its runtime what it runs, and every refusal says why.

- ONNX Runtime: the kernels the installed onnxruntime registers for its CPU provider (every
  domain, com.microsoft included), at the node's opset; ONNX function ops expand.
- OpenVINO: `Core.query_model` on a shape-bound copy; on a dynamic-shape model the CPU plugin
  rejects ops (silero-vad: Add, Concat, Unsqueeze, If) it runs once shapes are known.
- The search never refuses with an empty reason.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import compiler
from compiler.errors import ConstraintError
from compiler.onnx_io import import_onnx
from targets.base import get_backend
from targets.devices import get_profile
from tests.helpers import const, make_model, tensor_info


def _vad_like():
    """silero-vad's dynamic-shape form: an If picks a branch from the input's shape (batch of
    one: Squeeze), so the If output's rank is unknown until the input shape is bound; a
    ReduceMean, Add and Concat follow it."""
    def branch(name: str, squeeze: bool):
        node = h.make_node("Squeeze", ["f", "zero"], [f"o{name}"]) if squeeze else \
            h.make_node("Identity", ["f"], [f"o{name}"])
        return h.make_graph([node], name, [], [tensor_info(f"o{name}", T.FLOAT, None)])

    nodes = [h.make_node("Unsqueeze", ["x", "one"], ["f"], name="unsq"),
             h.make_node("Shape", ["x"], ["xs"], name="shape"),
             h.make_node("Gather", ["xs", "zero"], ["bs"], axis=0, name="batch"),
             h.make_node("Equal", ["bs", "one"], ["single"], name="eq"),
             h.make_node("If", ["single"], ["fe"], name="if", then_branch=branch("t", True),
                         else_branch=branch("e", False)),
             h.make_node("ReduceMean", ["fe", "m1"], ["c"], name="mean"),
             h.make_node("Add", ["c", "b"], ["a"], name="add"),
             h.make_node("Concat", ["a", "c"], ["y"], axis=-1, name="cat")]
    inits = [const([0], "zero", np.int64), const([1], "one", np.int64),
             const([-1], "m1", np.int64), const(0.5, "b", np.float32)]
    return make_model(nodes, [tensor_info("x", T.FLOAT, ["batch", "samples"])],
                      [tensor_info("y", T.FLOAT, None)], inits, opset=18)


def test_dynamic_shape_if_graph_with_add_and_concat_is_legal_on_openvino():
    pytest.importorskip("openvino")
    model = _vad_like()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for b in (1, 2):  # both branches run in the reference
        assert sess.run(None, {"x": np.ones((b, 64), np.float32)})[0].shape[-1] == 2
    rep = get_backend("openvino").legality(import_onnx(model), get_profile("host"))
    assert rep.ok, rep.unsupported
    assert {"add", "cat", "mean", "if"} <= set(rep.accelerated)
    assert any("shape-bound copy (x=" in n for n in rep.notes), rep.notes


def test_openvino_refusal_on_an_unconvertible_model_names_the_frontend_error():
    """A Conv whose input rank stays unknown at every binding (a Reshape to a shape read from
    an input): OpenVINO's frontend converts no bound copy either, and the reason says so."""
    pytest.importorskip("openvino")
    nodes = [h.make_node("Reshape", ["x", "s"], ["r"], name="reshape"),
             h.make_node("Conv", ["r", "w"], ["c"], name="conv"),
             h.make_node("Add", ["c", "b"], ["y"], name="add")]
    model = make_model(nodes, [tensor_info("x", T.FLOAT, ["n", 8]),
                               tensor_info("s", T.INT64, ["k"])],
                       [tensor_info("y", T.FLOAT, None)],
                       [const(np.ones((2, 1, 3), np.float32), "w"), const(0.5, "b", np.float32)])
    rep = get_backend("openvino").legality(import_onnx(model), get_profile("host"))
    if rep.ok:
        pytest.skip("this OpenVINO converts the model at some binding")
    assert all(why.strip() for why in rep.unsupported.values())
    assert any("shape-bound copy" in why for why in rep.unsupported.values()), rep.unsupported


def _dynamic_quantize_lstm():
    """com.microsoft DynamicQuantizeLSTM as ddddocr's model uses it (int8 weights, per-tensor
    scales): ONNX Runtime registers a CPU kernel; edgec's own fused-op list never had it."""
    rng = np.random.default_rng(0)
    hid, inp = 4, 3
    inits = [const(rng.integers(-127, 127, (1, inp, 4 * hid)), "W", np.int8),
             const(rng.integers(-127, 127, (1, hid, 4 * hid)), "R", np.int8),
             const(np.zeros((1, 8 * hid)), "B", np.float32),
             const([0.01], "ws", np.float32), const([0], "wz", np.int8),
             const([0.01], "rs", np.float32), const([0], "rz", np.int8)]
    node = h.make_node("DynamicQuantizeLSTM", ["x", "W", "R", "B", "", "", "", "", "ws", "wz",
                                               "rs", "rz"], ["y"], name="lstm",
                       domain="com.microsoft", hidden_size=hid)
    return make_model([node], [tensor_info("x", T.FLOAT, [5, 1, inp])],
                      [tensor_info("y", T.FLOAT, None)], inits,
                      extra_opsets={"com.microsoft": 1})


def test_onnxruntime_legality_asks_onnxruntime_com_microsoft_ops_included():
    model = _dynamic_quantize_lstm()
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": np.ones((5, 1, 3), np.float32)})[0]
    assert y.shape == (5, 1, 1, 4)  # ONNX Runtime runs it
    rep = get_backend("onnxruntime").legality(import_onnx(model), get_profile("host"))
    assert rep.ok and rep.accelerated == ["lstm"], rep.unsupported


def test_onnxruntime_legality_refuses_what_onnxruntime_lacks_and_says_why():
    nodes = [h.make_node("Relu", ["x"], ["r"], name="relu"),
             h.make_node("Foo", ["r"], ["y"], name="foo", domain="ai.onnx.contrib")]
    model = make_model(nodes, [tensor_info("x", T.FLOAT, [2])], [tensor_info("y", T.FLOAT, None)],
                       extra_opsets={"ai.onnx.contrib": 1})
    rep = get_backend("onnxruntime").legality(import_onnx(model), get_profile("host"))
    assert rep.accelerated == ["relu"]
    assert "no CPU kernel for ai.onnx.contrib::Foo" in rep.unsupported["foo"]
    assert ort.__version__ in rep.unsupported["foo"]


def test_com_microsoft_op_compiles_and_runs_on_onnxruntime(tmp_path):
    """A contrib op ONNX Runtime registers (com.microsoft Inverse) compiles, runs, verifies."""
    model = make_model([h.make_node("Inverse", ["x"], ["y"], name="inv", domain="com.microsoft")],
                       [tensor_info("x", T.FLOAT, [2, 3, 3])], [tensor_info("y", T.FLOAT, None)],
                       extra_opsets={"com.microsoft": 1})
    art = compiler.compile(model, target="host", backend="onnxruntime", out_dir=tmp_path / "b")
    assert art.verification["passed"] is True
    x = np.eye(3, dtype=np.float32)[None].repeat(2, 0) * 2.0
    np.testing.assert_allclose(art.run({"x": x})["y"], x / 4.0, rtol=1e-6)


def test_no_refusal_has_an_empty_reason():
    """`edgec compile m.onnx --target ethos-u55-128` said "no legal configuration for
    ethos-u55-128:" and nothing more. The device computes int8 only; fp32 is the lossless
    default: the message says both and what to pass."""
    model = make_model([h.make_node("Relu", ["x"], ["y"])], [tensor_info("x", T.FLOAT, [1, 4])],
                       [tensor_info("y", T.FLOAT, None)])
    with pytest.raises(ConstraintError) as e:
        compiler.compile(model, target="ethos-u55-128")
    assert "int8" in str(e.value) and "--calib" in str(e.value), str(e.value)
    from compiler.search import search  # the search itself, asked for what the device lacks

    with pytest.raises(ConstraintError) as e:
        search(import_onnx(model), get_profile("ethos-u55-128"), precisions=["fp32"])
    reason = str(e.value).split("ethos-u55-128:", 1)[1]
    assert "computes int8" in reason and "--calib" in reason, reason


def test_an_unavailable_backend_is_named_with_its_error(monkeypatch):
    from compiler.errors import MissingDependencyError
    from compiler.search import search

    def missing(name):
        raise MissingDependencyError("vendor-sdk", "vendorsdk", "to test")

    monkeypatch.setattr("targets.base.get_backend", missing)
    graph = import_onnx(make_model([h.make_node("Relu", ["x"], ["y"])],
                                   [tensor_info("x", T.FLOAT, [1, 4])],
                                   [tensor_info("y", T.FLOAT, None)]))
    with pytest.raises(ConstraintError) as e:
        search(graph, get_profile("host"), backends=["openvino"], precisions=["fp32"])
    msg = str(e.value)
    assert "backend 'openvino' is not available: " in msg and "vendor" in msg, msg
