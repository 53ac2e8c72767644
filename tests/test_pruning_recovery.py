"""Pruning importance from calibration data and recovery without retraining: the closed-form
errors match direct computation, bias compensation makes a constant channel's removal exact,
and recovery on the trained digits CNN keeps its accuracy where plain pruning loses it."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import compiler
from passes.pruning import prune_graph
from passes.pruning.apply import apply_plan
from passes.pruning.groups import analyze
from passes.pruning.importance import scores
from passes.pruning.recovery import candidates, prepare
from passes.shape_inference import infer_shapes
from tests.helpers import const, make_model, run_ort, tensor_info

RNG = np.random.default_rng(1)


def test_closed_form_errors_match_direct_computation():
    x = RNG.standard_normal((200, 6)) + RNG.standard_normal(6)  # features with non-zero means
    x[:, 4] = 0.7 * x[:, 1] - 0.2 * x[:, 2] + 0.05 * RNG.standard_normal(200)
    xa = np.concatenate([x, np.ones((200, 1))], 1)
    theta = RNG.standard_normal((7, 3))
    keep = np.array([True, True, True, False, False, True])
    cands = candidates(theta, xa.T @ xa, 200, keep, True, ridge=1e-12)
    y = xa @ theta
    for name, (t, err) in cands.items():
        assert np.all(t[:6][~keep] == 0), name
        direct = np.sum((y - xa @ t) ** 2) / np.sum(y ** 2)
        np.testing.assert_allclose(err, direct, rtol=1e-6, err_msg=name)
    e = {k: v[1] for k, v in cands.items()}
    assert e["lstsq"] <= e["bias"] <= e["none"]
    # least squares is the optimum over the kept rows: no perturbation does better
    t = cands["lstsq"][0]
    for _ in range(5):
        d = np.zeros_like(t)
        d[np.concatenate([keep, [True]])] = 1e-3 * RNG.standard_normal((5, 3))
        assert np.sum((y - xa @ (t + d)) ** 2) >= np.sum((y - xa @ t) ** 2)


def _dead_channel_model():
    wa, ba = RNG.standard_normal((6, 4, 1, 1)).astype(np.float32), np.ones(6, np.float32)
    wa[2] = 0
    ba[2] = 1.5  # channel 2 is relu(1.5): constant, so it carries no information
    wb, bb = RNG.standard_normal((3, 6, 1, 1)).astype(np.float32), np.zeros(3, np.float32)
    nodes = [h.make_node("Conv", ["x", "wa", "ba"], ["a"], name="A"),
             h.make_node("Relu", ["a"], ["r"]),
             h.make_node("Conv", ["r", "wb", "bb"], ["y"], name="B")]
    return make_model(nodes, [tensor_info("x", T.FLOAT, ["n", 4, 3, 3])],
                      [tensor_info("y", T.FLOAT, ["n", 3, 3, 3])],
                      [const(wa, "wa"), const(ba, "ba"), const(wb, "wb"), const(bb, "bb")])


def _calibration(n=4, shape=(8, 4, 3, 3)):
    return [{"x": RNG.standard_normal(shape).astype(np.float32)} for _ in range(n)]


def test_wifv_finds_a_constant_channel_and_bias_compensation_removes_it_exactly():
    m = _dead_channel_model()
    cal = _calibration()
    g = compiler.import_onnx(m)
    infer_shapes(g)
    a = analyze(g)
    sc = scores(a, "wifv", cal)
    zero = {u for u, s in sc.items() if s < 1e-12}
    assert len(zero) == 1  # Var(x_2) = 0; magnitude would keep it (B reads it with weight)
    assert min(scores(a, "magnitude").values()) > 0
    recover = prepare(a, zero, cal, "bias")
    apply_plan(a, zero)
    rec = recover()
    assert rec[0]["recovery"] == "bias" and rec[0]["error"]["bias"] < 1e-9
    assert rec[0]["error"]["none"] > 1e-3
    out = compiler.export_onnx(g)
    for feeds in _calibration(2, (3, 4, 3, 3)):
        np.testing.assert_allclose(run_ort(out, feeds)["y"], run_ort(m, feeds)["y"],
                                   rtol=1e-5, atol=1e-5)


def _mlp():
    d, f = 8, 24
    nodes = [h.make_node("MatMul", ["x", "w1"], ["a"], name="fc1"),
             h.make_node("Add", ["a", "b1"], ["ab"]), h.make_node("Relu", ["ab"], ["r"]),
             h.make_node("Gemm", ["r", "w2", "b2"], ["y"], name="fc2", transB=1)]
    return make_model(nodes, [tensor_info("x", T.FLOAT, ["n", d])],
                      [tensor_info("y", T.FLOAT, ["n", 5])],
                      [const(RNG.standard_normal((d, f)), "w1", np.float32),
                       const(RNG.standard_normal(f) * 0.5, "b1", np.float32),
                       const(RNG.standard_normal((5, f)), "w2", np.float32),
                       const(np.zeros(5), "b2", np.float32)])


@pytest.mark.parametrize("importance", ["magnitude", "activation", "wifv"])
def test_auto_recovery_picks_the_smallest_error_and_beats_no_recovery(importance):
    m = _mlp()
    cal = _calibration(6, (32, 8))
    held = _calibration(2, (32, 8))
    errs = {}
    for rec in ("none", "auto"):
        g = compiler.import_onnx(m)
        rep = prune_graph(g, 0.4, calibration=cal, importance=importance, recovery=rec)
        out = compiler.export_onnx(g)
        errs[rec] = sum(float(np.sum((run_ort(out, f)["y"] - run_ort(m, f)["y"]) ** 2))
                        for f in held)
        if rec == "auto":
            (layer,) = rep["layers"]
            assert layer["layer"] == "fc2" and layer["inputs_removed"] > 0
            assert layer["recovery"] == min(layer["error"], key=layer["error"].get)
    assert errs["auto"] < errs["none"]


def test_recovery_needs_calibration_data():
    g = compiler.import_onnx(_mlp())
    with pytest.raises(compiler.CompileError, match="needs calibration"):
        prune_graph(g, 0.3, recovery="lstsq")


def test_digits_cnn_recovers_accuracy_at_half_the_flops():
    from compiler.zoo import trained

    d = trained.digits_data()
    path = trained.get("digits_cnn")
    cal = trained.calibration_feeds(128, 32)
    accs = {}
    for rec in ("none", "lstsq"):
        g = compiler.optimize(str(path), "simplify")
        rep = prune_graph(g, 0.5, calibration=cal, importance="wifv", recovery=rec)
        assert rep["flops_removed"] >= 0.45
        accs[rec] = trained.accuracy(compiler.export_onnx(g), d["test_x"], d["test_y"])
    assert accs["lstsq"] >= 95.0 and accs["lstsq"] > accs["none"] + 20
