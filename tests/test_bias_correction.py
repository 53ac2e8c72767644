"""Weight bias correction (passes/bias_correction): the math, the graph it leaves, accuracy."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from compiler.cost.layer_proxy import speed_proxy
from compiler.ir import constant_value
from compiler.onnx_io import export_onnx, import_onnx
from compiler.precision_api import apply_precision
from compiler.zoo import trained
from passes.bias_correction import weight_shift
from passes.calibration import collect, make_session, run_model
from targets.devices import get_profile

K, N = 32, 16
MU_LIN = np.random.default_rng(5).uniform(-4, 4, K).astype(np.float32)
MU_CONV = np.array([2.0, -3.0, 1.5, 4.0, -1.0, 2.5, 3.0, -2.0], np.float32)


def _model(nodes, inits, x_shape, y_shape) -> onnx.ModelProto:
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, x_shape)],
                     [h.make_tensor_value_info("y", T.FLOAT, y_shape)], inits)
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _linear(with_add: bool = True) -> onnx.ModelProto:
    """y = c + x @ W (the Add reads the constant first, as torch exports it)."""
    rng = np.random.default_rng(1)
    inits = [nh.from_array((rng.standard_normal((K, N)) * 0.3).astype(np.float32), "w")]
    nodes = [h.make_node("MatMul", ["x", "w"], ["m" if with_add else "y"], name="mm")]
    if with_add:
        inits.append(nh.from_array(rng.standard_normal(N).astype(np.float32), "c"))
        nodes.append(h.make_node("Add", ["c", "m"], ["y"], name="add"))
    return _model(nodes, inits, ["n", K], ["n", N])


def _conv(groups: int = 1, bias: bool = False, pads: int = 0) -> onnx.ModelProto:
    c, o = len(MU_CONV), 8
    rng = np.random.default_rng(2)
    inits = [nh.from_array((rng.standard_normal((o, c // groups, 3, 3)) * 0.3)
                           .astype(np.float32), "w")]
    ins = ["x", "w"]
    if bias:
        inits.append(nh.from_array(rng.standard_normal(o).astype(np.float32), "b"))
        ins.append("b")
    nodes = [h.make_node("Conv", ins, ["y"], name="conv", group=groups, pads=[pads] * 4)]
    return _model(nodes, inits, ["n", c, 10, 10], ["n", o, None, None])


def _lin_feeds(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": (rng.standard_normal((64, K)) + MU_LIN).astype(np.float32)}
            for _ in range(n)]


def _conv_feeds(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    return [{"x": (rng.standard_normal((4, len(MU_CONV), 10, 10)) +
                   MU_CONV[None, :, None, None]).astype(np.float32)} for _ in range(n)]


def _quantize(model, feeds, on: bool, precision: str = "int8"):
    g = import_onnx(model)  # one range method: "auto" may pick another one once biases move
    rep = apply_precision(g, get_profile("host"), "onnxruntime", precision, feeds,
                          {"bias_correction": on, "calibration_method": "percentile"},
                          proxy=speed_proxy(g, get_profile("host"), "onnxruntime"))
    return g, rep


def _channel_mean_error(model_q, model_fp, feeds, axis: int) -> np.ndarray:
    """Per output channel, the mean of y_q - y_fp over held-out inputs (all other axes)."""
    sq, sf = make_session(export_onnx(model_q)), make_session(model_fp)
    diffs = [run_model(sq, f)["y"].astype(np.float64) - run_model(sf, f)["y"] for f in feeds]
    d = np.concatenate([np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis]) for x in diffs])
    return d.mean(axis=0)


def _dequantized_weight(g, node_name: str) -> np.ndarray:
    node = next(n for n in g if n.name == node_name)
    dq = node.inputs[1].producer
    assert dq.op_type == "DequantizeLinear"
    q, s = (np.asarray(constant_value(v), np.float64) for v in dq.inputs[:2])
    shape = [1] * q.ndim
    shape[dq.attr("axis", 1) % q.ndim] = -1
    return q * s.reshape(shape)


def _bias_of(g, node_name: str) -> np.ndarray | None:
    """A Conv's float bias, read back through its int32 DequantizeLinear."""
    node = next(n for n in g if n.name == node_name)
    if len(node.inputs) < 3 or node.inputs[2] is None:
        return None
    dq = node.inputs[2].producer
    q, s = (np.asarray(constant_value(v), np.float64) for v in dq.inputs[:2])
    return q * s


def _add_bias(add) -> tuple[np.ndarray, np.ndarray]:
    """An Add's constant bias and its rounding step, read back through an int32
    DequantizeLinear where ONNX Runtime's lowering gave it one (so ORT forms QGemm)."""
    v = next(x for x in add.inputs if x.producer is None or x.producer.op_type ==
             "DequantizeLinear" or constant_value(x) is not None)
    dq = v.producer
    if dq is not None and dq.op_type == "DequantizeLinear":
        q, s = (np.asarray(constant_value(x), np.float64) for x in dq.inputs[:2])
        return q * s, s
    return np.asarray(constant_value(v), np.float64), np.zeros(1)


# ---------------------------------------------------------------------------------------------
# (a) linear: exact formula, and the held-out mean error shrinks
def test_linear_add_constant_gets_exact_shift_and_mean_error_shrinks():
    model, calib, held = _linear(), _lin_feeds(8, 0), _lin_feeds(16, 1)
    g_on, rep_on = _quantize(model, calib, True)
    g_off, rep_off = _quantize(model, calib, False)
    # exact formula: c' = c + E[x] @ (W - W_q), E[x] over the calibration rows
    w = nh.to_array(model.graph.initializer[0]).astype(np.float64)
    c = nh.to_array(model.graph.initializer[1]).astype(np.float64)
    mu = np.concatenate([f["x"] for f in calib]).astype(np.float64).mean(axis=0)
    shift = mu @ (w - _dequantized_weight(g_on, "mm"))
    add = next(n for n in g_on if n.name == "add")
    bias, step = _add_bias(add)  # int32 rounding: half a bias step at most
    assert np.all(np.abs(bias - (c + shift)) <= 1e-5 * np.abs(c + shift) + 1e-6 + step / 2)
    assert np.abs(shift).max() > 1e-3  # the test would see a missing correction
    rec = rep_on["layers"]["mm"]["bias_correction"]
    assert rec["corrected"] and rec["into"] == "Add constant"
    assert rec["max_abs_shift"] == pytest.approx(np.abs(shift).max(), rel=1e-5)
    # the uncorrected graph keeps c exactly
    add_off = next(n for n in g_off if n.name == "add")
    bias_off, step_off = _add_bias(add_off)
    assert np.all(np.abs(bias_off - c) <= 1e-6 + step_off / 2)
    # on held-out inputs the per-channel mean error vs FP32 is much smaller
    e_on = _channel_mean_error(g_on, model, held, -1)
    e_off = _channel_mean_error(g_off, model, held, -1)
    ratio = np.abs(e_off).max() / np.abs(e_on).max()
    print(f"\nlinear: max |mean error| off {np.abs(e_off).max():.2e} "
          f"on {np.abs(e_on).max():.2e} ({ratio:.1f}x)")
    assert ratio >= 5.0


def test_conv_without_bias_gets_one_and_mean_error_shrinks():
    model, calib, held = _conv(), _conv_feeds(8, 0), _conv_feeds(16, 1)
    g_on, rep_on = _quantize(model, calib, True)
    g_off, _ = _quantize(model, calib, False)
    assert _bias_of(g_off, "conv") is None  # off: no bias appears
    w = nh.to_array(model.graph.initializer[0]).astype(np.float64)
    mu = np.concatenate([f["x"] for f in calib]).astype(np.float64).mean(axis=(0, 2, 3))
    expect = np.einsum("ocij,c->o", w - _dequantized_weight(g_on, "conv"), mu)
    b = _bias_of(g_on, "conv")
    assert b is not None
    step = np.asarray(constant_value(next(n for n in g_on if n.name == "conv")
                                     .inputs[2].producer.inputs[1]))
    np.testing.assert_allclose(b, expect, atol=float(step.max()) / 2 + 1e-7)
    rec = rep_on["layers"]["conv"]["bias_correction"]
    assert rec["corrected"] and rec["into"] == "new bias"
    assert rec["max_shift_in_bias_steps"] > 1  # a shift the int32 bias can express
    e_on = _channel_mean_error(g_on, model, held, 1)
    e_off = _channel_mean_error(g_off, model, held, 1)
    ratio = np.abs(e_off).max() / np.abs(e_on).max()
    print(f"\nconv: max |mean error| off {np.abs(e_off).max():.2e} "
          f"on {np.abs(e_on).max():.2e} ({ratio:.1f}x)")
    assert ratio >= 5.0


# ---------------------------------------------------------------------------------------------
# (b) grouped and depthwise convolutions
def _loop_shift(w, wq, mu, groups):
    """The Conv formula written out channel by channel (independent of weight_shift)."""
    o, cg = w.shape[:2]
    out = np.zeros(o)
    for oc in range(o):
        g = oc // (o // groups)
        for c in range(cg):
            out[oc] += (w[oc, c] - wq[oc, c]).sum() * mu[g * cg + c]
    return out


@pytest.mark.parametrize("groups", [2, 8])  # 8 = depthwise (one input channel per group)
def test_grouped_and_depthwise_conv(groups):
    model = _conv(groups=groups, bias=True)
    calib, held = _conv_feeds(8, 0), _conv_feeds(16, 1)
    g_on, rep_on = _quantize(model, calib, True)
    g_off, _ = _quantize(model, calib, False)
    w = nh.to_array(model.graph.initializer[0]).astype(np.float64)
    b = nh.to_array(model.graph.initializer[1]).astype(np.float64)
    wq = _dequantized_weight(g_on, "conv")
    mu = np.concatenate([f["x"] for f in calib]).astype(np.float64).mean(axis=(0, 2, 3))
    expect = _loop_shift(w, wq, mu, groups)
    conv = next(n for n in g_on if n.name == "conv")
    assert conv.attr("group") == groups
    np.testing.assert_allclose(weight_shift(conv, w, wq, mu), expect, rtol=1e-9, atol=1e-12)
    step = float(np.asarray(constant_value(conv.inputs[2].producer.inputs[1])).max())
    np.testing.assert_allclose(_bias_of(g_on, "conv"), b + expect, atol=step / 2 + 1e-7)
    np.testing.assert_allclose(_bias_of(g_off, "conv"), b, atol=step / 2 + 1e-7)
    assert rep_on["layers"]["conv"]["bias_correction"]["into"] == "bias"
    e_on = _channel_mean_error(g_on, model, held, 1)
    e_off = _channel_mean_error(g_off, model, held, 1)
    assert np.abs(e_off).max() / np.abs(e_on).max() >= 5.0


def test_padded_conv_still_improves():
    """With zero padding the border taps see 0, not E[x]: the correction is approximate there
    (documented), but on a 10x10 map it still removes most of the mean error."""
    model = _conv(pads=1)
    calib, held = _conv_feeds(8, 0), _conv_feeds(16, 1)
    e_on = _channel_mean_error(_quantize(model, calib, True)[0], model, held, 1)
    e_off = _channel_mean_error(_quantize(model, calib, False)[0], model, held, 1)
    assert np.abs(e_off).max() / np.abs(e_on).max() >= 2.0


def test_matmul_without_bias_add_is_skipped_with_a_reason():
    g, rep = _quantize(_linear(with_add=False), _lin_feeds(4, 0), True)
    rec = rep["layers"]["mm"]["bias_correction"]
    assert not rec["corrected"] and "Add" in rec["why"]
    assert [n.op_type for n in g].count("Add") == 0


def test_int4_weight_matmul_is_corrected_too():
    model, calib, held = _linear(), _lin_feeds(8, 0), _lin_feeds(16, 1)
    g_on, rep = _quantize(model, calib, True, "int4-weight")
    g_off, _ = _quantize(model, calib, False, "int4-weight")
    assert rep["layers"]["mm"]["bias_correction"]["corrected"]
    e_on = _channel_mean_error(g_on, model, held, -1)
    e_off = _channel_mean_error(g_off, model, held, -1)
    assert np.abs(e_off).max() / np.abs(e_on).max() >= 5.0


# ---------------------------------------------------------------------------------------------
# (d) off reproduces the uncorrected lowering; calibration means
def _ops(model: onnx.ModelProto) -> list[tuple[str, int]]:
    return [(n.op_type, len(n.input)) for n in model.graph.node]


def _inits(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: nh.to_array(t) for t in model.graph.initializer}


@pytest.mark.parametrize("case", ["linear", "conv", "conv_bias"])
def test_off_reproduces_the_uncorrected_graph(case):
    model, feeds = {"linear": (_linear(), _lin_feeds(4, 0)),
                    "conv": (_conv(), _conv_feeds(4, 0)),
                    "conv_bias": (_conv(groups=2, bias=True), _conv_feeds(4, 0))}[case]
    g_off, rep = _quantize(model, feeds, False)
    assert rep["totals"]["bias_corrected"] == 0
    assert all("bias_correction" not in v for v in rep["layers"].values())
    off = export_onnx(g_off)
    assert not any("corrected" in t.name for t in off.graph.initializer)
    orig = _inits(model)
    if case == "linear":  # the Add reads the original constant, as int32 (ORT's QGemm form)
        add = next(n for n in g_off if n.name == "add")
        dq = add.inputs[0].producer
        assert dq.op_type == "DequantizeLinear" and dq.inputs[0].name.startswith("c_")
        bias, step = _add_bias(add)
        assert np.all(np.abs(bias - orig["c"]) <= 1e-6 + step / 2)
    elif case == "conv":
        assert _bias_of(g_off, "conv") is None
    else:  # int32 bias = round(b / (s_x s_w)) of the original b
        dq = next(n for n in g_off if n.name == "conv").inputs[2].producer
        q, bs = (np.asarray(constant_value(v)) for v in dq.inputs[:2])
        np.testing.assert_array_equal(q, np.round(orig["b"].astype(np.float64) / bs))
    # on: the same graph but for the bias (a bias input added where the Conv had none)
    on = export_onnx(_quantize(model, feeds, True)[0])
    assert on.graph.SerializeToString() != off.graph.SerializeToString()
    if case != "conv":
        assert _ops(on) == _ops(off)
        a, b = _inits(on), _inits(off)
        new = [k for k, x in a.items() if not any(
            x.dtype == y.dtype and np.array_equal(x, y) for y in b.values())]
        assert len(a) == len(b) and len(new) == 1  # only the bias values differ
    else:
        assert len(_ops(on)) == len(_ops(off)) + 1  # the new bias's DequantizeLinear


def test_collect_streams_channel_means():
    feeds = _conv_feeds(3, 7) + [{"x": _conv_feeds(1, 8)[0]["x"][:1]}]  # uneven batches
    g = import_onnx(_conv())
    res = collect(g, ["x"], feeds, means=[("x", 1), ("y", 1), ("x", -1)])
    xs = np.concatenate([f["x"] for f in feeds]).astype(np.float64)
    np.testing.assert_allclose(res.means[("x", 1)], xs.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(res.means[("x", -1)], xs.mean(axis=(0, 1, 2)), rtol=1e-9)
    assert res.means[("y", 1)].shape == (8,)
    assert set(res.ranges) == {"x"}  # means add no range observers


# ---------------------------------------------------------------------------------------------
# (c) the trained digits models keep their accuracy with correction (the default)
def _heldout_sqnr(model, path, x) -> float:
    ref = make_session(open(path, "rb").read()).run(None, {"pixel_values": x})[0]
    y = make_session(model).run(None, {"pixel_values": x})[0]
    ref, y = ref.astype(np.float64), y.astype(np.float64)
    return float(-10 * np.log10(((y - ref) ** 2).sum() / (ref ** 2).sum()))


@pytest.mark.slow
@pytest.mark.parametrize("name", trained.NAMES)
def test_trained_models_int8_with_correction(name):
    """Full INT8 (every layer, so every correction counts) on the held-out test split. Measured:
    the CNN gains ~1.5-2.3 dB output SQNR; on the ViT the effect is within +-0.3 dB (its
    patch-embedding Conv and first qkv lose a little at the network output although their own
    output error shrinks), so there only "no real loss" is asserted."""
    path = trained.get(name)
    d = trained.digits_data()
    fp32 = trained.accuracy(path, d["test_x"], d["test_y"])
    res = {}
    for on in (True, False):
        g = import_onnx(str(path))
        rep = apply_precision(g, get_profile("host"), "onnxruntime", "int8",
                              trained.calibration_feeds(64, 8), {"bias_correction": on},
                              proxy=speed_proxy(g, get_profile("host"), "onnxruntime"))
        m = export_onnx(g)
        res[on] = (trained.accuracy(m, d["test_x"], d["test_y"]),
                   _heldout_sqnr(m, path, d["test_x"]), rep)
    (acc, sq_on, rep), (acc_off, sq_off, _) = res[True], res[False]
    recs = [v["bias_correction"] for v in rep["layers"].values()]
    n_corr = sum(r["corrected"] for r in recs)
    print(f"\n{name}: top-1 fp32 {fp32:.2f}% int8 corrected {acc:.2f}% uncorrected "
          f"{acc_off:.2f}%; held-out SQNR {sq_on:.2f} vs {sq_off:.2f} dB; {n_corr} corrected")
    assert acc >= fp32 - 1.0
    # every layer with a constant weight is corrected (both models have a bias everywhere);
    # the others are the attention MatMuls of two activations
    assert n_corr and all(r["corrected"] or r["why"].startswith("no constant float weight")
                          for r in recs)
    assert rep["totals"]["bias_corrected"] == n_corr
    if name == "digits_cnn":
        assert sq_on >= sq_off + 0.5
    else:
        assert sq_on >= sq_off - 1.0
