"""Q/DQ and Cast lowering (passes/quantize), observers (passes/calibration), calib_data."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from compiler.calib_data import load_calibration
from compiler.cost.layer_proxy import speed_proxy
from compiler.errors import ConstraintError
from compiler.onnx_io import export_onnx, import_onnx
from compiler.precision_api import apply_precision
from passes import quantize as qz
from passes.calibration import HistogramObserver, collect, make_session, run_model
from targets.devices import get_profile
from tests.stand_ins import no_vnni_host, vnni_host

RNG = np.random.default_rng(0)


def _f(*shape, rng=RNG):
    return rng.standard_normal(shape).astype(np.float32)


def _model(opset: int = 17) -> onnx.ModelProto:
    """Conv(+bias) -> Relu -> Reshape -> MatMul(const W) -> LayerNorm -> Softmax."""
    rng = np.random.default_rng(1)
    inits = [nh.from_array(_f(8, 3, 3, 3, rng=rng) * 0.3, "w"),
             nh.from_array(_f(8, rng=rng), "b"),
             nh.from_array(np.array([0, -1], np.int64), "shape"),
             nh.from_array(_f(512, 64, rng=rng) * 0.05, "w2"),
             nh.from_array(np.ones(64, np.float32), "gamma"),
             nh.from_array(np.zeros(64, np.float32), "beta")]
    nodes = [h.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["c"], ["r"], name="relu"),
             h.make_node("Reshape", ["r", "shape"], ["f"], name="flat"),
             h.make_node("MatMul", ["f", "w2"], ["m"], name="fc"),
             h.make_node("LayerNormalization", ["m", "gamma", "beta"], ["ln"], name="ln",
                         axis=-1),
             h.make_node("Softmax", ["ln"], ["y"], name="softmax", axis=-1)]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, ["n", 3, 8, 8])],
                     [h.make_tensor_value_info("y", T.FLOAT, ["n", 64])], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", opset)])
    m.ir_version = 10 if opset >= 21 else 8
    return m


def _feeds(n=6):
    return [{"x": _f(2, 3, 8, 8)} for _ in range(n)]


def _run(model, feeds, out="y"):
    if out not in {o.name for o in model.graph.output}:
        model.graph.output.append(h.make_tensor_value_info(out, T.FLOAT, None))
    return run_model(make_session(model), feeds)[out]


def _cos(a, b):
    return float((a * b).sum() / np.linalg.norm(a) / np.linalg.norm(b))


def _producer(graph, node, i):
    return node.inputs[i].producer


def test_int8_conv_qdq_structure_and_float_ops_untouched():
    g = import_onnx(_model())
    rep = apply_precision(g, get_profile("host"), "onnxruntime", "int8", _feeds(), {},
                          proxy=speed_proxy(g, get_profile("host"), "onnxruntime"))
    conv = next(n for n in g if n.name == "conv")
    # weight: DQ(int8 [8,3,3,3], per-channel scales along axis 0)
    wdq = _producer(g, conv, 1)
    assert wdq.op_type == "DequantizeLinear" and wdq.attr("axis") == 0
    assert wdq.inputs[0].const.numpy().dtype == np.int8
    assert wdq.inputs[1].const.numpy().shape == (8,)
    assert not wdq.inputs[2].const.numpy().any()  # symmetric: zero points 0
    # activation: Q -> DQ, per tensor, uint8
    adq = _producer(g, conv, 0)
    assert adq.op_type == "DequantizeLinear" and adq.inputs[1].const.numpy().shape == ()
    q = adq.inputs[0].producer
    assert q.op_type == "QuantizeLinear" and q.inputs[0].name == "x"
    assert q.inputs[2].const.numpy().dtype == np.uint8
    # bias: int32 with scale x_scale * w_scale
    bdq = _producer(g, conv, 2)
    assert bdq.inputs[0].const.numpy().dtype == np.int32
    np.testing.assert_allclose(bdq.inputs[1].const.numpy(),
                               adq.inputs[1].const.numpy() * wdq.inputs[1].const.numpy(),
                               rtol=1e-6)
    # MatMul weight [K, N]: per output column, axis 1
    fc = next(n for n in g if n.name == "fc")
    assert _producer(g, fc, 1).attr("axis") == 1
    # Softmax / LayerNorm keep float inputs straight from float producers
    for name in ("ln", "softmax"):
        n = next(x for x in g if x.name == name)
        assert n.inputs[0].producer.op_type not in ("DequantizeLinear", "Cast")
        assert "precision" not in n.meta
    assert rep["kept_float_ops"] == {"LayerNormalization": 1, "Softmax": 1}
    assert {v["precision"] for v in rep["layers"].values()} == {"int8"}
    # numerics close to fp32, and the graph is valid ONNX
    m = export_onnx(g)
    onnx.checker.check_model(m)
    x = _feeds(1)[0]
    ref, got = _run(_model(), x), _run(m, x)
    assert np.abs(ref - got).max() < 0.05 * np.abs(ref).max() + 1e-3


def test_shared_activation_gets_one_qdq_pair():
    w1, w2 = nh.from_array(_f(16, 4), "w1"), nh.from_array(_f(16, 4), "w2")
    nodes = [h.make_node("MatMul", ["x", "w1"], ["a"], name="a"),
             h.make_node("MatMul", ["x", "w2"], ["b"], name="b"),
             h.make_node("Add", ["a", "b"], ["y"], name="add")]
    gp = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [2, 16])],
                      [h.make_tensor_value_info("y", T.FLOAT, [2, 4])], [w1, w2])
    g = import_onnx(h.make_model(gp, opset_imports=[h.make_opsetid("", 17)]))
    apply_precision(g, get_profile("host"), "onnxruntime", "int8", [{"x": _f(2, 16)}], {},
                    proxy=speed_proxy(g, get_profile("host"), "onnxruntime"))
    assert sum(n.op_type == "QuantizeLinear" for n in g) == 1


@pytest.mark.parametrize("prec", ["fp16", "bf16"])
def test_half_precision_whole_graph(prec):
    """fp16/bf16 convert the whole graph (passes.fp16), where the op schemas allow it."""
    g = import_onnx(_model())
    rep = apply_precision(g, get_profile("host"), "onnxruntime", prec, None, None)
    elem = qz.FLOAT_TYPES[prec]
    conv = next(n for n in g if n.name == "conv")
    m = export_onnx(g)
    onnx.checker.check_model(m, full_check=True)  # types legal for every op
    if prec == "fp16":  # ONNX Runtime's CPU kernels take fp16 Conv/MatMul, not bf16 ones
        assert conv.inputs[1].const.dtype == elem and conv.meta["precision"] == prec
        assert rep["totals"][prec] == 2
        x = _feeds(1)[0]
        ref, got = _run(_model(), x), _run(m, x)
        assert np.abs(ref - got).max() < 1e-2
    else:  # opset-17 Conv has no bf16 type: it stays fp32, and the report says so
        assert conv.inputs[1].const.dtype == T.FLOAT
        assert rep["layers"]["conv"]["precision"] == "fp32"


def test_fold_cast_pairs_between_half_layers():
    w1, w2 = nh.from_array(_f(16, 16), "w1"), nh.from_array(_f(16, 4), "w2")
    nodes = [h.make_node("MatMul", ["x", "w1"], ["a"], name="a"),
             h.make_node("MatMul", ["a", "w2"], ["y"], name="b")]
    gp = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [2, 16])],
                      [h.make_tensor_value_info("y", T.FLOAT, [2, 4])], [w1, w2])
    g = import_onnx(h.make_model(gp, opset_imports=[h.make_opsetid("", 17)]))
    apply_precision(g, get_profile("host"), "onnxruntime", "fp16", None, {})
    assert [n.op_type for n in g] == ["Cast", "MatMul", "MatMul", "Cast"]  # no cast between


@pytest.mark.parametrize("opset,form", [(17, "matmulnbits"), (21, "dq21")])
def test_int4_weight_forms_run(opset, form):
    g = import_onnx(_model(opset))
    rep = apply_precision(g, get_profile("host"), "onnxruntime", "int4-weight", None,
                          {"int4_block_size": 32})
    assert rep["layers"]["fc"]["precision"] == "int4-weight" and form in \
        rep["layers"]["fc"]["reason"]
    assert rep["layers"]["conv"]["precision"] == "fp32"
    m = export_onnx(g)
    x = _feeds(1)[0]
    ref, got = _run(_model(opset), x, "m"), _run(m, x, "m")  # the MatMul's own output
    assert _cos(ref, got) > 0.99


def test_int8_needs_calibration():
    with pytest.raises(ConstraintError, match="calibration"):
        apply_precision(import_onnx(_model()), get_profile("host"), None, "mixed", None, None)


def test_histogram_grows_exactly_and_percentiles():
    data = [RNG.standard_normal(5000).astype(np.float32) * s for s in (0.1, 1.0, 10.0)]
    obs = HistogramObserver("percentile", bins=256, percentile=99.0)
    for d in data:
        obs.update(d)
    allx = np.concatenate(data)
    assert obs.hist.sum() == allx.size and obs.min == allx.min() and obs.max == allx.max()
    lo, hi = obs.range()
    width = (obs.hi - obs.lo) / obs.bins
    assert abs(lo - np.percentile(allx, 1.0)) < 2 * width
    assert abs(hi - np.percentile(allx, 99.0)) < 2 * width
    ent = HistogramObserver("entropy", bins=2048)
    heavy = np.concatenate([RNG.standard_normal(20000), [60.0, -45.0]]).astype(np.float32)
    ent.update(heavy)
    elo, ehi = ent.range()
    assert -45 < elo < -2 and 2 < ehi < 60  # outliers clipped, the bulk kept


def test_collect_streams_and_keeps_reference():
    g = import_onnx(_model())
    res = collect(g, ["r", "f"], _feeds(10), "minmax", keep=3)
    assert res.n_samples == 10 and len(res.samples) == 3 and len(res.reference) == 3
    assert res.ranges["r"][0] == 0.0 and res.shapes["f"] == (2, 512)


def test_calib_folder_npz_and_npy(tmp_path):
    g = import_onnx(_model())
    d1 = tmp_path / "npz"
    d1.mkdir()
    for i in range(3):
        np.savez(d1 / f"s{i}.npz", x=RNG.standard_normal((3, 8, 8)))  # no batch, float64
    feeds = list(load_calibration(d1, g))
    assert len(feeds) == 3 and feeds[0]["x"].shape == (1, 3, 8, 8)
    assert feeds[0]["x"].dtype == np.float32
    d2 = tmp_path / "npy"
    d2.mkdir()
    np.save(d2 / "a.npy", _f(2, 3, 8, 8))
    np.save(d2 / "b.npy", _f(2, 3, 8, 8))
    cs = load_calibration(d2, g)
    assert len(list(cs)) == 2 and len(list(cs)) == 2  # re-iterable
    rep = apply_precision(g, get_profile("host"), "onnxruntime", "int8", str(d2), {},
                          proxy=speed_proxy(g, get_profile("host"), "onnxruntime"))
    assert rep["calibration"]["samples"] == 2


def test_int4_for_other_backends_upgrades_to_standard_dq():
    g = import_onnx(_model(17))
    rep = apply_precision(g, get_profile("host"), "tvm", "int4-weight", None, {})
    assert g.opset_imports[""] == 21 and "dq21" in rep["layers"]["fc"]["reason"]
    assert not any(n.domain == "com.microsoft" for n in g)
    x = _feeds(1)[0]
    assert _cos(_run(_model(17), x, "m"), _run(export_onnx(g), x, "m")) > 0.99


def test_ort_float_layer_after_int8_layer_gets_its_input_quantized():
    """Regression: on ONNX Runtime an int8 MatMul whose result is not re-quantized runs in float
    with its weights dequantized on every call (measured 27x slower than FP32 on an MLP). The
    input of the float layer that follows gets a Q -> DQ so ORT forms an integer kernel."""
    rng = np.random.default_rng(0)
    inits = [nh.from_array(_f(512, 512, rng=rng) * 0.05, f"w{i}") for i in range(3)]
    nodes = [h.make_node("MatMul", ["x", "w0"], ["a"], name="fc1"),
             h.make_node("Relu", ["a"], ["ar"], name="r1"),
             h.make_node("MatMul", ["ar", "w1"], ["b"], name="fc2"),
             h.make_node("Relu", ["b"], ["br"], name="r2"),
             h.make_node("MatMul", ["br", "w2"], ["y"], name="fc3")]
    gp = h.make_graph(nodes, "mlp", [h.make_tensor_value_info("x", T.FLOAT, [64, 512])],
                      [h.make_tensor_value_info("y", T.FLOAT, [64, 512])], inits)
    model = h.make_model(gp, opset_imports=[h.make_opsetid("", 17)])
    calib = [{"x": _f(64, 512, rng=rng)} for _ in range(4)]
    g = import_onnx(model)
    rep = apply_precision(g, vnni_host(), "onnxruntime", "mixed", calib,
                          {"keep_float": ["fc3"], "min_sqnr_db": 10},
                          proxy=speed_proxy(g, vnni_host(), "onnxruntime"))
    assert rep["layers"]["fc2"]["precision"] == "int8"
    assert rep["layers"]["fc3"]["precision"] == "fp32" and "input_requantized" in \
        rep["layers"]["fc3"]
    fc3 = next(n for n in g if n.name == "fc3")
    assert fc3.inputs[0].producer.op_type == "DequantizeLinear"  # activation Q -> DQ
    assert fc3.inputs[1].const is not None  # the weight itself stays float
    out = export_onnx(g)
    x = {"x": calib[0]["x"]}
    ref, got = _run(model, x), _run(out, x)
    assert np.abs(ref - got).max() <= 0.05 * np.abs(ref).max()
    # other backends fuse Q/DQ themselves: no extra quantization there
    g2 = import_onnx(model)
    rep2 = apply_precision(g2, vnni_host(), "openvino", "mixed", calib,
                           {"keep_float": ["fc3"], "min_sqnr_db": 10},
                           proxy=speed_proxy(g2, vnni_host(), "openvino"))
    assert "input_requantized" not in rep2["layers"]["fc3"]


def test_overridable_initializer_is_not_baked_into_int8():
    """An initializer that is also a graph input can be replaced at run time: it is not a
    constant, so it must not be quantized into fixed int8 weights (nor converted by fp16)."""
    w = nh.from_array(_f(16, 8), "W")
    gp = h.make_graph([h.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                      [h.make_tensor_value_info("x", T.FLOAT, [2, 16]),
                       h.make_tensor_value_info("W", T.FLOAT, [16, 8])],
                      [h.make_tensor_value_info("y", T.FLOAT, [2, 8])], [w])
    model = h.make_model(gp, opset_imports=[h.make_opsetid("", 17)])
    g = import_onnx(model)
    apply_precision(g, get_profile("host"), "onnxruntime", "int8", [{"x": _f(2, 16)}], {},
                    proxy=speed_proxy(g, get_profile("host"), "onnxruntime"))
    mm = next(n for n in g if n.op_type == "MatMul")
    dq = mm.inputs[1].producer
    assert dq.op_type == "DequantizeLinear"
    # quantized at run time like an activation (Q of the input W), not baked as int8 weights
    assert dq.inputs[0].const is None and dq.inputs[0].producer.op_type == "QuantizeLinear"
    assert dq.inputs[0].producer.inputs[0].name == "W"
    g = import_onnx(model)
    apply_precision(g, get_profile("host"), "onnxruntime", "fp16", None, {})
    assert g.initializers["W"].const.dtype == T.FLOAT


def test_ort_int8_conv_output_is_requantized_so_ort_forms_qlinearconv(tmp_path):
    """Regression: ONNX Runtime forms QLinearConv only for DQ -> Conv [-> Relu] -> Q. An int8
    Conv feeding a float Add (a residual block) ran as a float Conv that dequantized its weights
    on every call. Its result now gets a Q -> DQ (shared with the next int8 layer's)."""

    rng = np.random.default_rng(1)
    inits = [nh.from_array(_f(16, 16, 3, 3, rng=rng) * 0.1, f"w{i}") for i in range(2)]
    nodes = [h.make_node("Conv", ["x", "w0"], ["a"], name="c1", pads=[1] * 4),
             h.make_node("Relu", ["a"], ["ar"], name="r1"),
             h.make_node("Conv", ["ar", "w1"], ["b"], name="c2", pads=[1] * 4),
             h.make_node("Add", ["b", "ar"], ["s"], name="res"),
             h.make_node("Relu", ["s"], ["y"], name="r2")]
    gp = h.make_graph(nodes, "res", [h.make_tensor_value_info("x", T.FLOAT, [1, 16, 16, 16])],
                      [h.make_tensor_value_info("y", T.FLOAT, [1, 16, 16, 16])], inits)
    model = h.make_model(gp, opset_imports=[h.make_opsetid("", 17)])
    calib = [{"x": _f(1, 16, 16, 16, rng=rng)} for _ in range(4)]
    g = import_onnx(model)
    # AVX2 without VNNI (reduce_range): the graph is then correct on any x86 CI host
    rep = apply_precision(g, no_vnni_host(), "onnxruntime", "int8", calib, {},
                          proxy=speed_proxy(g, no_vnni_host(), "onnxruntime"))
    # c2 feeds the float Add; c1's Relu feeds c2's Q and the Add, which now shares that Q
    assert rep["layers"]["c2"].get("output_requantized") and \
        rep["layers"]["c1"].get("output_requantized")
    q_of_ar = [n for n in g if n.op_type == "QuantizeLinear" and n.inputs[0].name == "ar"]
    assert len(q_of_ar) == 1
    out = export_onnx(g)
    ops = _ort_optimized_ops(out, tmp_path)
    assert ops.count("QLinearConv") == 2 and "Conv" not in ops and "FusedConv" not in ops, ops
    x = {"x": calib[0]["x"]}
    ref, got = _run(model, x), _run(out, x)
    assert np.abs(ref - got).max() <= 0.05 * np.abs(ref).max()
    g2 = import_onnx(model)  # OpenVINO fuses Q/DQ itself: nothing added there
    rep2 = apply_precision(g2, vnni_host(), "openvino", "int8", calib, {},
                           proxy=speed_proxy(g2, vnni_host(), "openvino"))
    assert not any(v.get("output_requantized") for v in rep2["layers"].values())


def test_ort_int8_matmul_bias_add_gets_int32_bias(tmp_path):
    """Regression: ONNX Runtime fuses MatMul + Add into a Gemm before it looks at Q/DQ; with a
    float bias and a float result that Gemm ran in float, dequantizing its weights on every call
    (measured 2.6 ms vs 0.02 ms for a 1024x1024 layer). A bias given as DequantizeLinear of
    int32 (scale = input scale x weight scale) lets it form QGemm."""

    rng = np.random.default_rng(2)
    inits = [nh.from_array(_f(256, 128, rng=rng) * 0.05, "w"),
             nh.from_array(_f(128, rng=rng), "b")]
    nodes = [h.make_node("MatMul", ["x", "w"], ["m"], name="fc"),
             h.make_node("Add", ["m", "b"], ["a"], name="bias"),
             h.make_node("Relu", ["a"], ["y"], name="act")]
    gp = h.make_graph(nodes, "fc", [h.make_tensor_value_info("x", T.FLOAT, [4, 256])],
                      [h.make_tensor_value_info("y", T.FLOAT, [4, 128])], inits)
    model = h.make_model(gp, opset_imports=[h.make_opsetid("", 17)])
    calib = [{"x": _f(4, 256, rng=rng)} for _ in range(4)]
    g = import_onnx(model)
    # AVX2 without VNNI (reduce_range): the graph is then correct on any x86 CI host
    rep = apply_precision(g, no_vnni_host(), "onnxruntime", "int8", calib, {},
                          proxy=speed_proxy(g, no_vnni_host(), "onnxruntime"))
    assert rep["layers"]["fc"].get("bias") == "int32"
    add = next(n for n in g if n.op_type == "Add")
    dq = add.inputs[1].producer
    assert dq.op_type == "DequantizeLinear" and dq.inputs[0].dtype == T.INT32
    out = export_onnx(g)
    ops = _ort_optimized_ops(out, tmp_path)
    assert "QGemm" in ops and "FusedGemm" not in ops and "Gemm" not in ops, ops
    x = {"x": calib[0]["x"]}
    ref, got = _run(model, x), _run(out, x)
    assert np.abs(ref - got).max() <= 0.05 * np.abs(ref).max()


def _ort_optimized_ops(model, tmp_path) -> list[str]:
    """The op types of `model` after ONNX Runtime's CPU graph optimisations (level "all")."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "ort_optimized.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node]


def test_int8_honours_keep_float():
    """Regression: "keep_float" (node names never quantized) was ignored by precision int8."""
    g = import_onnx(_model())
    rep = apply_precision(g, get_profile("host"), "openvino", "int8", _feeds(2),
                          {"keep_float": ["fc"]},
                          proxy=speed_proxy(g, get_profile("host"), "openvino"))
    assert rep["layers"]["conv"]["precision"] == "int8"
    assert rep["layers"]["fc"]["precision"] == "fp32"
    assert "keep_float" in rep["layers"]["fc"]["reason"]
    fc = next(n for n in g if n.name == "fc")
    assert fc.inputs[1].const is not None  # its weight stays a float constant


def test_keep_float_on_an_int8_only_target_is_a_clear_error():
    """Regression: on a target that computes int8 only (Ethos-U) keep_float was dropped
    silently and the layer shipped in int8 anyway."""
    g = import_onnx(_model())
    with pytest.raises(ConstraintError, match="keep_float.*int8 only"):
        apply_precision(g, get_profile("ethos-u55-128"), "tosa", "int8", _feeds(2),
                        {"keep_float": ["fc"]})


def test_mixed_without_sensitivity_assigns_by_predicted_speed_only():
    """"sensitivity": False (the search's preview of a mixed graph) puts int8 on every layer
    predicted faster in int8, runs no per-layer sensitivity, and says so in the report."""
    g = import_onnx(_model())
    rep = apply_precision(g, vnni_host(), "openvino", "mixed", _feeds(2),
                          {"sensitivity": False, "min_sqnr_db": 200},
                          proxy=speed_proxy(g, vnni_host(), "openvino"))
    assert rep["budget"]["kind"] == "none" and "sensitivity" in rep["budget"]["why"]
    faster = [k for k, v in rep["layers"].items()
              if v["predicted_ms"]["int8"] is not None
              and v["predicted_ms"]["int8"] < v["predicted_ms"]["fp32"]]
    assert faster  # the 512x64 MatMul at least
    assert all(rep["layers"][k]["precision"] == "int8" for k in faster)
    assert all(v["sensitivity"] is None for v in rep["layers"].values())


def test_mixed_checks_measure_the_graph_that_is_deployed():
    """Regression: the end-to-end checks of mixed lowered the chosen layers alone, while the
    deployed graph also gets ONNX Runtime's requantization (Q/DQ on an int8 Conv's readers,
    int32 biases) afterwards, so what was checked against the budget was not what shipped.
    The check of the chosen prefix now measures exactly the final graph."""
    rng = np.random.default_rng(3)
    inits = [nh.from_array(_f(16, 16, 3, 3, rng=rng) * 0.2, f"w{i}") for i in range(2)]
    inits.append(nh.from_array(_f(4, 16, 1, 1, rng=rng), "wh"))
    nodes = [h.make_node("Conv", ["x", "w0"], ["a"], name="c1", pads=[1] * 4),
             h.make_node("Relu", ["a"], ["ar"], name="r1"),
             h.make_node("Conv", ["ar", "w1"], ["b"], name="c2", pads=[1] * 4),
             h.make_node("Add", ["b", "ar"], ["s"], name="add"),  # reads c2's result in float
             h.make_node("Relu", ["s"], ["sr"], name="r2"),
             h.make_node("Conv", ["sr", "wh"], ["y"], name="head")]
    gp = h.make_graph(nodes, "res", [h.make_tensor_value_info("x", T.FLOAT, [1, 16, 12, 12])],
                      [h.make_tensor_value_info("y", T.FLOAT, None)], inits)
    g = import_onnx(h.make_model(gp, opset_imports=[h.make_opsetid("", 17)]))
    feeds = [{"x": _f(1, 16, 12, 12, rng=rng)} for _ in range(4)]
    rep = apply_precision(g, vnni_host(), "onnxruntime", "mixed", feeds, {"min_sqnr_db": 5},
                          proxy=speed_proxy(g, vnni_host(), "onnxruntime"))
    assert rep["layers"]["c2"].get("output_requantized")
    chosen = [k for k, v in rep["layers"].items() if v["precision"] == "int8"]
    last = rep["budget"]["checks"][-1]
    assert last["layers"] == len(chosen) > 0
    assert last["measured"] == pytest.approx(rep["budget"]["measured"]["noise"], rel=1e-6)
