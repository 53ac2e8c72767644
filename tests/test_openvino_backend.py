"""OpenVINO backend: IR emission, numerics against ONNX Runtime, static shapes for the NPU."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as H
from onnx import numpy_helper as NH

from compiler.errors import CompileError
from compiler.onnx_io import import_onnx
from targets.base import BuildConfig, get_backend

ov = pytest.importorskip("openvino")

RNG = np.random.default_rng(0)


def _w(name, shape, scale=0.3):
    return NH.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def _model(nodes, inputs, outputs, inits, opset=17):
    m = H.make_model(H.make_graph(nodes, "g", inputs, outputs, inits),
                     opset_imports=[H.make_opsetid("", opset)])
    onnx.checker.check_model(m, full_check=True)
    return m


def conv_net():
    inits = [_w("w1", (8, 3, 3, 3)), _w("b1", (8,), 0.1), _w("w2", (4, 8, 3, 3))]
    nodes = [H.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             H.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             H.make_node("MaxPool", ["r1"], ["p1"], name="pool", kernel_shape=[2, 2],
                         strides=[2, 2]),
             H.make_node("Conv", ["p1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             H.make_node("GlobalAveragePool", ["c2"], ["y"], name="gap")]
    return _model(nodes, [H.make_tensor_value_info("x", T.FLOAT, ["N", 3, 32, 32])],
                  [H.make_tensor_value_info("y", T.FLOAT, ["N", 4, 1, 1])], inits)


def matmul_softmax_net():
    inits = [_w("w", (32, 64), 0.2), _w("b", (64,), 0.1), _w("w2", (64, 10), 0.2)]
    nodes = [H.make_node("MatMul", ["x", "w"], ["h"], name="mm1"),
             H.make_node("Add", ["h", "b"], ["hb"], name="bias"),
             H.make_node("Tanh", ["hb"], ["t"], name="tanh"),
             H.make_node("MatMul", ["t", "w2"], ["logits"], name="mm2"),
             H.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1)]
    return _model(nodes, [H.make_tensor_value_info("x", T.FLOAT, ["B", 5, 32])],
                  [H.make_tensor_value_info("probs", T.FLOAT, ["B", 5, 10]),
                   H.make_tensor_value_info("logits", T.FLOAT, ["B", 5, 10])], inits)


HOST = SimpleNamespace(name="host", is_host=True, static_shapes=False, constraints=(),
                       precisions=("fp32", "fp16", "bf16", "int8"),
                       compute_units=(SimpleNamespace(name="cpu", kind="cpu", count=1),))
NPU = SimpleNamespace(name="intel-npu-standin", is_host=False, static_shapes=False,
                      constraints=(), precisions=("fp32", "fp16", "int8"),
                      compute_units=(SimpleNamespace(name="npu", kind="npu", count=1),
                                     SimpleNamespace(name="cpu", kind="cpu", count=1)))


def _check_close(got, ref):
    assert got.shape == ref.shape and got.dtype == np.float32
    scale = float(np.abs(ref).max())
    assert float(np.abs(got - ref).max()) <= 1e-3 * scale
    a, b = got.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
    assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) >= 0.9999


@pytest.mark.parametrize("make,shape", [(conv_net, (2, 3, 32, 32)),
                                        (matmul_softmax_net, (3, 5, 32))])
def test_ir_matches_onnxruntime(tmp_path, make, shape):
    model = make()
    be = get_backend("openvino")
    cfg = BuildConfig(precision="fp32", options={"threads": 2})
    files = be.emit(import_onnx(model), HOST, cfg, str(tmp_path))
    assert files == ["model.xml", "model.bin", "ov_config.json"]
    assert (tmp_path / "model.xml").stat().st_size > 0 and (tmp_path / "model.bin").exists()
    assert be.build(str(tmp_path), HOST, cfg) == [] and be.can_run(HOST)
    runner = be.load(str(tmp_path), {})
    x = RNG.standard_normal(shape).astype(np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    refs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})))
    got = runner.run({"x": x})
    assert runner.input_names == ["x"] and list(got) == [o.name for o in model.graph.output]
    for name, ref in refs.items():
        _check_close(got[name], ref)
    props = json.loads((tmp_path / "ov_config.json").read_text())["properties"]
    assert props == {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32",
                     "INFERENCE_NUM_THREADS": 2}


def test_npu_dynamic_batch_without_shapes_is_a_clear_error(tmp_path):
    be = get_backend("openvino")
    with pytest.raises(CompileError, match=r"input 'x' dim 0 \('N'\) is dynamic.*NPU.*shapes="):
        be.emit(import_onnx(conv_net()), NPU, BuildConfig(), str(tmp_path))
    assert not (tmp_path / "model.xml").exists()
    rep = be.legality(import_onnx(conv_net()), NPU, BuildConfig())
    assert "input:x" in rep.unsupported and "dim 0" in rep.unsupported["input:x"]
    assert any("NPU plugin not available" in n for n in rep.notes)
    loose = be.legality(import_onnx(conv_net()), NPU)  # no config: emit() decides
    assert loose.ok and any("dim 0" in n for n in loose.notes)


def test_npu_with_shapes_writes_static_ir(tmp_path):
    be = get_backend("openvino")
    cfg = BuildConfig(precision="fp16", shapes={"x": (1, 3, 32, 32)})
    be.emit(import_onnx(conv_net()), NPU, cfg, str(tmp_path))
    model = ov.Core().read_model(str(tmp_path / "model.xml"))
    ps = model.inputs[0].get_partial_shape()
    assert ps.is_static and list(ps.to_shape()) == [1, 3, 32, 32]
    assert model.outputs[0].get_partial_shape().is_static
    cfgj = json.loads((tmp_path / "ov_config.json").read_text())
    assert cfgj["device"] == "NPU" and cfgj["static_shapes"]
    assert cfgj["properties"]["INFERENCE_PRECISION_HINT"] == "f16"
    assert "INFERENCE_NUM_THREADS" not in cfgj["properties"]
    assert not be.can_run(NPU)
    # IR weights stay FP32 (precision is a compile-time hint, not baked in)
    assert (tmp_path / "model.bin").stat().st_size >= 4 * (8 * 3 * 9 + 8 + 4 * 8 * 9)


@pytest.mark.parametrize("precision,hint", [("bf16", "bf16"), ("fp16", "f16")])
def test_precision_hint_recorded_and_used(tmp_path, precision, hint):
    be = get_backend("openvino")
    be.emit(import_onnx(matmul_softmax_net()), HOST, BuildConfig(precision=precision),
            str(tmp_path))
    cfg = json.loads((tmp_path / "ov_config.json").read_text())
    assert cfg["properties"]["INFERENCE_PRECISION_HINT"] == hint and cfg["device"] == "CPU"
    runner = be.load(str(tmp_path), {})
    assert _effective_hint(runner) == _runs_as(hint)
    out = runner.run({"x": RNG.standard_normal((1, 5, 32)).astype(np.float32)})["probs"]
    np.testing.assert_allclose(out.sum(-1), 1.0, atol=2e-2)


def test_legality_reports_ops_openvino_cannot_convert():
    nodes = [H.make_node("Relu", ["x"], ["r"], name="relu"),
             H.make_node("FastGelu", ["r"], ["g"], name="fg", domain="com.microsoft"),
             H.make_node("Foo", ["g"], ["y"], name="foo", domain="ai.onnx.contrib")]
    m = H.make_model(
        H.make_graph(nodes, "g", [H.make_tensor_value_info("x", T.FLOAT, [2, 4])],
                     [H.make_tensor_value_info("y", T.FLOAT, [2, 4])]),
        opset_imports=[H.make_opsetid("", 17), H.make_opsetid("com.microsoft", 1),
                       H.make_opsetid("ai.onnx.contrib", 1)])
    rep = get_backend("openvino").legality(import_onnx(m), HOST)
    assert "foo" in rep.unsupported and "Foo" in rep.unsupported["foo"]
    assert "relu" in rep.accelerated and "foo" not in rep.accelerated
    ok = get_backend("openvino").legality(import_onnx(conv_net()), HOST)
    assert ok.ok and len(ok.accelerated) == 5
    # the plugin answers for the shapes it is given: queried on a copy with x's dims bound
    assert ok.notes == ["CPU plugin queried (Core.query_model) on a shape-bound copy "
                        "(x=1x3x32x32)"]


def test_runner_uses_onnx_names_when_openvino_merges_tensor_names(tmp_path):
    """A no-op Cast right after an input is folded away and its name lands on the input port."""
    nodes = [H.make_node("Cast", ["pixel_values"], ["pv"], name="cast", to=T.FLOAT),
             H.make_node("Relu", ["pv"], ["r"], name="relu"),
             H.make_node("Identity", ["r"], ["out"], name="id")]
    m = _model(nodes, [H.make_tensor_value_info("pixel_values", T.FLOAT, [1, 4])],
               [H.make_tensor_value_info("out", T.FLOAT, [1, 4])], [])
    be = get_backend("openvino")
    be.emit(import_onnx(m), HOST, BuildConfig(), str(tmp_path))
    runner = be.load(str(tmp_path), {})
    assert runner.input_names == ["pixel_values"] and runner.output_names == ["out"]
    x = np.array([[-1.0, 2.0, -3.0, 4.0]], np.float32)
    np.testing.assert_array_equal(runner.run({"pixel_values": x})["out"], np.maximum(x, 0))


@pytest.mark.parametrize("half,hint", [(False, "f32"), (True, "f16")])
def test_int8_and_mixed_keep_their_float_layers_precision(tmp_path, half, hint):
    """Left unset, the CPU plugin runs the float layers of a quantized model in its own default
    (bf16 on CPUs with avx512_bf16): not what the precision map validated, and 1.6x slower
    than f32 on a CPU without AMX. The float layers keep the precision the graph gives them."""
    from compiler.cost.layer_proxy import speed_proxy
    from compiler.precision_api import apply_precision
    from targets.devices import get_profile

    g = import_onnx(conv_net())
    feeds = [{"x": RNG.standard_normal((1, 3, 32, 32)).astype(np.float32)}]
    apply_precision(g, get_profile("host"), "openvino", "int8", feeds, {},
                    proxy=speed_proxy(g, get_profile("host"), "openvino"))
    if half:  # a mixed map whose float layers are fp16
        from passes.fp16 import to_fp16

        g = to_fp16(g)
    for precision in ("int8", "mixed", "int4-weight"):
        be = get_backend("openvino")
        be.emit(g, HOST, BuildConfig(precision=precision), str(tmp_path / precision))
        props = json.loads((tmp_path / precision / "ov_config.json").read_text())["properties"]
        assert props["INFERENCE_PRECISION_HINT"] == hint, precision
    runner = be.load(str(tmp_path / "int4-weight"), {})
    assert _effective_hint(runner) == _runs_as(hint)


def _effective_hint(runner) -> str:
    return str(runner.compiled.get_property("INFERENCE_PRECISION_HINT"))


def _runs_as(hint: str) -> str:
    """The precision the CPU plugin runs a hint at on this machine: the hint itself where the
    CPU has that arithmetic (OPTIMIZATION_CAPABILITIES lists BF16/FP16), else f32 (the plugin
    falls back silently: an AVX2-only CPU runs a bf16 hint in f32)."""
    caps = set(ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    has = {"f32": True, "bf16": "BF16" in caps, "f16": "FP16" in caps}[hint]
    name = {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}[hint if has else "f32"]
    return f"<Type: '{name}'>"
