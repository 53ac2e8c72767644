"""compile(), Artifact, load() and verification on the host."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import compiler
from compiler.errors import CompileError, InvalidModelError


def _conv_net(dynamic_hw: bool = True) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    hw = ["height", "width"] if dynamic_hw else [16, 16]
    inits = [onnx.numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32),
                                          "w"),
             onnx.numpy_helper.from_array(np.array([0, -1], np.int64), "shape")]
    nodes = [h.make_node("Identity", ["pixel_values"], ["x"], name="id"),
             h.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[0, 0, 0, 0]),
             h.make_node("Relu", ["c"], ["r"], name="relu"),
             h.make_node("GlobalAveragePool", ["r"], ["p"], name="gap"),
             h.make_node("Reshape", ["p", "shape"], ["logits"], name="flat")]
    g = h.make_graph(nodes, "convnet",
                     [h.make_tensor_value_info("pixel_values", T.FLOAT, ["batch", 3, *hw])],
                     [h.make_tensor_value_info("logits", T.FLOAT, ["batch", 4])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def test_compile_runs_verifies_and_saves(tmp_path):
    art = compiler.compile(_conv_net(), target="host", out_dir=tmp_path / "b")
    assert art.backend == "onnxruntime" and art.target == "host"
    ver = art.verification
    assert ver["passed"] is True and ver["cosine"] >= 0.9999
    # unbound H/W were given real image sizes, not 1 (a 3x3 conv needs >= 3)
    assert ver["input_shapes"]["pixel_values"][2] >= 3
    m = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert m["source"]["sha256"] and set(m["files"]) >= {"model.onnx", "ort_config.json"}
    assert m["versions"]["onnxruntime"] and m["config"]["precision"] == "fp32"
    assert "identity_elimination" in m["config"]["passes"]
    assert isinstance(art.predicted, dict)
    x = np.random.default_rng(1).standard_normal((2, 3, 20, 24)).astype(np.float32)
    y = art.run({"pixel_values": x})["logits"]
    assert y.shape == (2, 4)
    # dynamic dims are kept in the artifact
    out = onnx.load(tmp_path / "b" / "model.onnx")
    dims = out.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[2].dim_param == "height"
    loaded = compiler.load(tmp_path / "b")
    np.testing.assert_array_equal(loaded.run({"pixel_values": x})["logits"], y)


def test_saved_copy_and_tamper_detection(tmp_path):
    art = compiler.compile(_conv_net(False))  # no out_dir: a temporary bundle
    saved = art.save(tmp_path / "copy")
    assert (tmp_path / "copy" / "manifest.json").exists() and saved.files == art.files
    with open(tmp_path / "copy" / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(InvalidModelError, match="sha256"):
        compiler.load(tmp_path / "copy")


def test_recompile_replaces_previous_bundle(tmp_path):
    compiler.compile(_conv_net(False), out_dir=tmp_path / "b")
    (tmp_path / "b" / "stale.txt").write_text("old")
    compiler.compile(_conv_net(False), out_dir=tmp_path / "b")
    assert not (tmp_path / "b" / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


def test_example_inputs_and_shapes_bind_dims(tmp_path):
    x = np.ones((1, 3, 8, 8), np.float32)
    art = compiler.compile(_conv_net(), example_inputs={"pixel_values": x})
    assert art.verification["input_shapes"]["pixel_values"] == [1, 3, 8, 8]
    assert "example" in art.verification["inputs_from"]
    art = compiler.compile(_conv_net(), shapes={"pixel_values": (2, 3, 12, 12)})
    assert art.verification["input_shapes"]["pixel_values"] == [2, 3, 12, 12]
    with pytest.raises(CompileError, match="not a model input"):
        compiler.compile(_conv_net(), shapes={"nope": (1,)})


def test_unbindable_dims_skip_verification_with_a_warning():
    # a Reshape to a fixed size accepts only one input size, which no candidate hits
    g = h.make_graph([h.make_node("Reshape", ["x", "s"], ["y"])], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, ["n"])],
                     [h.make_tensor_value_info("y", T.FLOAT, [7, 11])],
                     [onnx.numpy_helper.from_array(np.array([7, 11], np.int64), "s")])
    art = compiler.compile(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]))
    assert art.verification["passed"] is None
    assert "x[0]=n" in art.verification["skipped"]


def test_verification_failure_raises_and_leaves_nothing(tmp_path, monkeypatch):
    from targets import onnxruntime as ort_backend

    real = ort_backend.OrtRunner.run

    def corrupt(self, feeds):
        return {k: v + 1.0 for k, v in real(self, feeds).items()}

    monkeypatch.setattr(ort_backend.OrtRunner, "run", corrupt)
    with pytest.raises(compiler.errors.VerificationError, match="differ"):
        compiler.compile(_conv_net(False), out_dir=tmp_path / "b")
    assert list(tmp_path.iterdir()) == []


def test_optimize_runs_a_pipeline_without_building():
    g = compiler.optimize(_conv_net(), pipeline="simplify")
    assert "Identity" not in [n.op_type for n in g]
    g = compiler.optimize(_conv_net(), passes=["dce"])
    assert "Identity" in [n.op_type for n in g]


def test_torch_module(tmp_path):
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(),
                              torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    x = torch.randn(1, 3, 16, 16)
    art = compiler.compile(net, example_inputs=(x,), out_dir=tmp_path / "t")
    assert art.verification["passed"] is True
    got = art.run({"input_0": x.numpy()})
    want = net(x).detach().numpy()
    np.testing.assert_allclose(next(iter(got.values())), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(CompileError, match="example_inputs"):
        compiler.compile(net)


def test_device_bundles_are_verified_through_a_stand_in(tmp_path):
    """A Jetson TensorRT bundle cannot run here; its strongly typed ONNX still is checked."""
    art = compiler.compile(_conv_net(False), target="jetson-orin", precision="fp16",
                           out_dir=tmp_path / "orin")
    # no backend given: the search picks it among the target's backends, at the given precision
    assert art.backend == "tensorrt" and "cost-model search" in art.manifest["backend_reason"]
    search = art.manifest["search"]
    assert {c["config"]["precision"] for c in [search["choice"], *search["runners_up"]]} == \
        {"fp16"}
    ver = art.verification
    assert ver["passed"] is True and "ONNX Runtime" in ver["runner"]
    assert ver["tolerance"]["min_cosine"] == 0.999  # the FP16 tolerance
    assert {"build_engine.py", "trtexec.sh", "model.onnx"} <= set(art.files)
    fp16 = onnx.load(tmp_path / "orin" / "model.onnx")
    assert any(t.data_type == T.FLOAT16 for t in fp16.graph.initializer)


def test_proxy_verification_catches_a_broken_device_graph(tmp_path, monkeypatch):
    from targets import tensorrt

    monkeypatch.setattr(tensorrt, "to_fp16", lambda g, dtype="fp16": _break(g))
    with pytest.raises(compiler.errors.VerificationError, match="differ.*ONNX Runtime"):
        compiler.compile(_conv_net(False), target="jetson-orin", precision="fp16",
                         out_dir=tmp_path / "orin")
    assert not (tmp_path / "orin").exists()


def _break(graph):
    relu = next(n for n in graph if n.op_type == "Relu")
    relu.op_type = "Sigmoid"
    return graph


def test_default_compile_searches_backends_losslessly(tmp_path):
    """No backend and no precision: the cost-model search picks the backend (and fusion,
    threads) among fp32 configurations only, since no loss was accepted; the manifest keeps
    the prediction and the runners-up. A fixed backend and precision skip the search."""
    art = compiler.compile(_conv_net(False), out_dir=tmp_path / "a")
    search = art.manifest["search"]
    assert art.backend == search["choice"]["config"]["backend"]
    assert "cost-model search" in art.manifest["backend_reason"]
    assert art.config["precision"] == "fp32" and search["runners_up"]
    assert {c["config"]["precision"] for c in search["runners_up"]} == {"fp32"}
    assert art.predicted["latency_ms"] == search["choice"]["predicted"]["latency_ms"]
    fixed = compiler.compile(_conv_net(False), backend="onnxruntime", precision="fp32",
                             out_dir=tmp_path / "b")
    assert fixed.manifest["search"] is None and fixed.predicted["latency_ms"] > 0
