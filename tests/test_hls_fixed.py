"""Fixed point (ap_fixed arithmetic), the FPGA layer chain, the fixed-point policy and the
resource model: numpy only, no hls4ml."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from compiler.cost.fpga import (
    KV260_RESOURCES,
    estimate,
    reuse_options,
    search_reuse,
    valid_reuse,
)
from compiler.errors import ConstraintError, UnsupportedOpError
from compiler.fixed_sim import simulate
from compiler.fixedpoint import FixedType, integer_bits_for, requantize
from compiler.fpga_layers import META_KEY, input_type, layers_from_graph
from compiler.onnx_io import import_onnx
from passes.fixed_point import assign_fixed_point
from tests.helpers import const, make_model, run_ort, tensor_info


def test_fixed_type_parse_and_modes():
    t = FixedType.parse("fixed<8,3,RND,SAT>")
    assert (t.width, t.integer, t.frac, t.signed) == (8, 3, 5, True)
    assert t.hls() == "fixed<8,3,RND,SAT>" and FixedType.parse("ufixed<6,2>").signed is False
    # RND rounds half up, SAT clamps to [-4, 4 - 2^-5]
    np.testing.assert_array_equal(t.quantize([0.015625, -0.015625, 9.0, -9.0]),
                                  [0.03125, 0.0, 4 - 2 ** -5, -4.0])
    w = FixedType(8, 3)  # TRN (floor) and WRAP by default, as ap_fixed
    np.testing.assert_array_equal(w.quantize([0.03, -0.03, 4.0]), [0.0, -0.03125, -4.0])
    # requantize: 7 fractional bits -> 5, round half up, then saturate
    np.testing.assert_array_equal(requantize(np.array([2, 6, -2, 10_000]), 7, t),
                                  [1, 2, 0, 127])
    assert integer_bits_for(-0.5, 0.99) == 1 and integer_bits_for(0, 4.0, signed=False) == 3
    assert integer_bits_for(-3.9, 3.9) == 3


def _chain_model() -> onnx.ModelProto:
    """Conv(s2, pad) -> Relu -> depthwise Conv -> Relu -> MaxPool -> Flatten -> MatMul + Add
    -> Relu -> Gemm(transB): every layer kind, NCHW, with a CHW flatten before a dense."""
    rng = np.random.default_rng(0)
    inits = [const(rng.normal(size=(4, 2, 3, 3)).astype(np.float32) * 0.4, "w1"),
             const(rng.normal(size=4).astype(np.float32) * 0.1, "b1"),
             const(rng.normal(size=(4, 1, 3, 3)).astype(np.float32) * 0.4, "w2"),
             const(rng.normal(size=(4 * 2 * 2, 6)).astype(np.float32) * 0.3, "w3"),
             const(rng.normal(size=6).astype(np.float32) * 0.1, "b3"),
             const(rng.normal(size=(3, 6)).astype(np.float32) * 0.3, "w4"),
             const(rng.normal(size=3).astype(np.float32) * 0.1, "b4")]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", strides=[2, 2],
                         pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="dw", group=4, pads=[1, 1, 1, 1],
                         kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p"], name="pool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "w3"], ["m"], name="mm"),
        helper.make_node("Add", ["m", "b3"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r3"], name="relu3"),
        helper.make_node("Gemm", ["r3", "w4", "b4"], ["y"], name="fc", transB=1),
    ]
    return make_model(nodes, [tensor_info("x", shape=["n", 2, 8, 8])],
                      [tensor_info("y", shape=["n", 3])], inits)


def test_layer_chain_float_equals_onnx_runtime():
    model = _chain_model()
    layers = layers_from_graph(import_onnx(model))
    assert [ly.kind for ly in layers] == ["conv2d", "relu", "dwconv2d", "relu", "maxpool2d",
                                          "flatten", "dense", "relu", "dense"]
    assert layers[0].out_shape == (4, 4, 4) and layers[6].output == "a"
    x = np.random.default_rng(1).normal(size=(5, 2, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(simulate(layers, None, x, exact=False),
                               run_ort(model, {"x": x})["y"], rtol=1e-5, atol=1e-5)


def test_layer_chain_rejects_branches_with_the_node():
    model = _chain_model()
    g = model.graph
    g.node.append(helper.make_node("Add", ["y", "y"], ["z"], name="res"))
    g.output[0].name = "z"
    with pytest.raises(UnsupportedOpError, match="'res'.*residual"):
        layers_from_graph(import_onnx(model))


def test_exact_reference_wraps_and_truncates_like_ap_fixed():
    """A dense layer whose accumulator has fewer fractional bits than the products: each
    product is floored into the accumulator before the sum (hls4ml's mult[] array)."""
    model = make_model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc")],
                       [tensor_info("x", shape=[1, 2])], [tensor_info("y", shape=[1, 1])],
                       [const(np.array([[0.75], [0.75]], np.float32), "w"),
                        const(np.array([0.0], np.float32), "b")])
    g = import_onnx(model)
    (layer,) = layers_from_graph(g)
    layer.types = {"weight": FixedType(4, 1), "bias": FixedType(4, 1),
                   "accum": FixedType(6, 4), "result": FixedType(8, 4)}
    in_t = FixedType(6, 2)
    x = np.array([[0.25, 0.25]], np.float32)  # 0.1875 per product -> floor to 0.25 grid: 0
    assert simulate([layer], in_t, x)[0, 0] == 0.0
    layer.types["accum"] = FixedType(10, 4)  # exact products: 0.375 -> result grid 1/16
    assert simulate([layer], in_t, x)[0, 0] == 0.375


def _calib(n=6, batch=8, seed=2):
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=(batch, 2, 8, 8)).astype(np.float32)} for _ in range(n)]


def test_fixed_point_policy_ranges_and_budget():
    model = _chain_model()
    g = import_onnx(model)
    calib = _calib()
    rep = assign_fixed_point(g, calib, {"min_sqnr_db": 30.0, "sensitivity_samples": 6})
    layers = layers_from_graph(g)
    in_t = input_type(g)
    assert in_t is not None
    assert all(META_KEY in n.meta for n in g if n.name in {ly.name for ly in layers})
    # integer bits: no calibration value overflows any result type
    from compiler.fixed_sim import input_codes, run_chain

    xs = np.concatenate([c["x"] for c in calib])
    flo = [simulate(layers[:k + 1], None, xs, exact=False) for k in range(len(layers))]
    for ly, f in zip(layers, flo):
        assert np.abs(f).max() <= ly.types["result"].max_value + 2.0 ** -ly.types["result"].frac
    # accumulators are exact: product fractional bits kept
    for ly in layers:
        if ly.weight is not None:
            assert ly.types["accum"].frac >= ly.types["weight"].frac
    # the budget holds on the calibration set, as measured and reported
    measured = rep["budget"]["measured"]
    assert measured["sqnr_db"] >= 30.0 and rep["budget"]["kind"] == "sqnr"
    cur, frac = input_codes(in_t, xs)
    (y, f), = run_chain(layers, cur, frac)
    ref = run_ort(model, {"x": xs})["y"]
    noise = float(((y * 2.0 ** -f - ref) ** 2).sum() / (ref ** 2).sum())
    assert noise <= 10 ** -3.0
    assert set(rep["layers"]) == {ly.name for ly in layers}
    assert rep["layers"]["fc"]["weight"].startswith("fixed<")


def test_tighter_budget_gives_wider_types():
    loose, tight = import_onnx(_chain_model()), import_onnx(_chain_model())
    assign_fixed_point(loose, _calib(), {"min_sqnr_db": 15.0})
    assign_fixed_point(tight, _calib(), {"min_sqnr_db": 40.0})

    def bits(g):
        return sum(ly.types["weight"].width + ly.types["result"].width
                   for ly in layers_from_graph(g) if ly.weight is not None)

    assert bits(tight) > bits(loose)


def _jet_layers(width: int = 16):
    """hls4ml's jet-tagging MLP 16-64-32-32-5 (ReLU), every type `width` bits."""
    rng = np.random.default_rng(0)
    sizes = [16, 64, 32, 32, 5]
    nodes, inits, cur = [], [], "x"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        inits += [const(rng.normal(size=(a, b)).astype(np.float32) * 0.2, f"w{i}"),
                  const(np.zeros(b, np.float32), f"b{i}")]
        nodes.append(helper.make_node("Gemm", [cur, f"w{i}", f"b{i}"], [f"g{i}"],
                                      name=f"fc{i}"))
        cur = f"g{i}"
        if i < 3:
            nodes.append(helper.make_node("Relu", [cur], [f"r{i}"], name=f"relu{i}"))
            cur = f"r{i}"
    model = make_model(nodes, [tensor_info("x", shape=[1, 16])],
                       [tensor_info(cur, shape=[1, 5])], inits)
    layers = layers_from_graph(import_onnx(model))
    t = FixedType(width, 6)
    for ly in layers:
        ly.types = {"result": t} if ly.weight is None else {
            "weight": t, "bias": t, "accum": FixedType(min(2 * width, 40), 12), "result": t}
    return layers


def test_jet_mlp_latency_in_published_range():
    """hls4ml at reuse factor 1: tens of ns to ~100 ns at 200 MHz (arXiv 1804.06913)."""
    layers = _jet_layers()
    fp = estimate(layers, {}, io_type="io_parallel", in_bits=16, clock_ns=5.0)
    ns = fp.latency_cycles * 5.0
    assert 25.0 <= ns <= 150.0 and fp.interval_cycles == 1
    n_mult = 16 * 64 + 64 * 32 + 32 * 32 + 32 * 5
    assert fp.dsp == n_mult  # 16-bit operands: one DSP48E2 each
    slow = estimate(layers, {ly.name: 4 for ly in layers if ly.weight is not None},
                    io_type="io_parallel", in_bits=16)
    assert slow.latency_cycles > fp.latency_cycles and slow.dsp == n_mult // 4
    narrow = estimate(_jet_layers(8), {}, io_type="io_parallel", in_bits=8)
    assert narrow.dsp == 0 and narrow.lut > 0  # narrow products are LUT multipliers


def test_valid_reuse_matches_hls4ml_rule():
    assert valid_reuse(16, 64, 1) and valid_reuse(16, 64, 16) and not valid_reuse(16, 64, 3)
    hls = pytest.importorskip("hls4ml")
    be = hls.backends.get_backend("Vitis")
    for n_in, n_out in ((16, 64), (27, 16), (9, 32), (64, 10)):
        want = be.get_valid_reuse_factors(n_in, n_out)
        assert [r for r in range(1, n_in * n_out + 1) if valid_reuse(n_in, n_out, r)] == want


def test_reuse_search_fits_device_and_keeps_latency_low():
    layers = _jet_layers()
    tight = {**KV260_RESOURCES, "dsp": 1000}
    reuse, fp = search_reuse(layers, io_type="io_parallel", in_bits=16, limits=tight)
    assert fp.dsp <= 1000 and max(reuse.values()) > 1
    for name, rf in reuse.items():
        ly = next(x for x in layers if x.name == name)
        assert rf in reuse_options(ly)
    big = {**KV260_RESOURCES, "dsp": 10_000, "lut": 10 ** 6}  # jet MLP at R = 1: 4,256 DSPs
    free, fp1 = search_reuse(layers, io_type="io_parallel", in_bits=16, limits=big)
    assert set(free.values()) == {1} and fp1.latency_cycles < fp.latency_cycles


def test_reuse_search_names_smallest_footprint_when_nothing_fits():
    layers = _jet_layers()
    with pytest.raises(ConstraintError, match=r"smallest footprint reachable .* DSP"):
        search_reuse(layers, io_type="io_parallel", in_bits=16,
                     limits={"dsp": 1, "lut": 10, "bram": 1, "uram": 0})


def test_symbolic_image_dims_are_rejected():
    model = _chain_model()
    model.graph.input[0].type.tensor_type.shape.dim[2].dim_param = "h"
    with pytest.raises(UnsupportedOpError, match="static shape"):
        layers_from_graph(import_onnx(model))
