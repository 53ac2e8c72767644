"""Sensitivity in one session (local proxy) and the budget-boundary search."""

from __future__ import annotations

import numpy as np
import pytest

from compiler.onnx_io import export_onnx, import_onnx
from passes import quantize as qz
from passes.calibration import collect, make_session, run_model, with_outputs
from passes.precision import search_prefix
from passes.sensitivity import clone, local_sensitivity
from tests.test_precision_lowering import _feeds, _model


def _calibrated():
    g = import_onnx(_model())
    layers = [n for n in g if n.op_type in qz.QUANTIZABLE]
    tensors = [v.name for n in layers for v in (n.inputs[0], n.outputs[0])]
    return g, layers, collect(g, tensors, _feeds(6), "minmax", keep=4)


def test_local_sensitivity_equals_each_layer_quantized_alone():
    """One session with a lowered twin per layer gives, for every layer, exactly the noise of
    its output when that layer alone is lowered in its own graph (its inputs stay float)."""
    g, layers, calib = _calibrated()

    def lower(graph, node):
        return qz.lower_int8(graph, node, calib.ranges)

    got = local_sensitivity(g, [n.name for n in layers], lower, calib)
    assert set(got) == {"conv", "fc"}
    for n in layers:
        alone = clone(g)
        lower(alone, next(x for x in alone if x.name == n.name))
        y = n.outputs[0].name
        ref = make_session(with_outputs(g, [y]))
        low = make_session(with_outputs(alone, [y]))
        sig = err = 0.0
        for f in calib.samples:
            a = run_model(ref, f)[y].astype(np.float64)
            b = run_model(low, f)[y].astype(np.float64)
            sig += float((a * a).sum())
            err += float(((b - a) ** 2).sum())
        assert got[n.name].noise == pytest.approx(err / sig, rel=1e-5)
        assert 0 < got[n.name].noise < 1e-2 and got[n.name].cosine > 0.99
    # the graph itself is untouched
    assert export_onnx(g).SerializeToString() == export_onnx(
        import_onnx(_model())).SerializeToString()


def _additive(costs, alpha, calls):
    def measure(names):
        calls.append(len(names))
        return alpha * sum(costs[n] for n in names)
    return measure


def test_search_prefix_whole_order_fits_in_one_check():
    costs = {f"l{i}": 1.0 for i in range(10)}
    calls: list[int] = []
    k, checks = search_prefix(list(costs), costs, 100.0, _additive(costs, 2.0, calls))
    assert k == 10 and calls == [10] and checks == [(10, 20.0)]


@pytest.mark.parametrize("alpha", [0.3, 1.0, 3.0])
@pytest.mark.parametrize("budget", [0.5, 4.0, 17.5, 40.0])
def test_search_prefix_finds_the_longest_fitting_prefix(alpha, budget):
    rng = np.random.default_rng(int(alpha * 10 + budget))
    order = [f"l{i}" for i in range(40)]
    proxy = {n: float(rng.uniform(0.1, 2.0)) for n in order}
    true = {n: proxy[n] * float(rng.uniform(0.5, 2.0)) for n in order}  # proxy is only a guide
    calls: list[int] = []
    k, checks = search_prefix(order, proxy, budget, _additive(true, alpha, calls), 12)
    cum = np.cumsum([alpha * true[n] for n in order])
    best = int(np.searchsorted(cum, budget, side="right"))
    assert k == best  # the budget is spent: one more layer would not fit
    assert len(calls) <= 12 and len(set(calls)) == len(calls)
    assert all((v <= budget) == (n <= best) for n, v in checks)


def test_search_prefix_keeps_a_measured_prefix_when_checks_run_out():
    order = [f"l{i}" for i in range(64)]
    costs = {n: 1.0 for n in order}
    calls: list[int] = []
    k, checks = search_prefix(order, costs, 10.0, _additive(costs, 1.0, calls), 2)
    assert len(checks) == 2
    assert k == 0 or any(n == k and v <= 10.0 for n, v in checks)
    assert search_prefix(order, costs, 10.0, _additive(costs, 1.0, []), 0) == (0, [])
    assert search_prefix([], {}, 1.0, _additive({}, 1.0, [])) == (0, [])


def _fake_quant_mse(x, lo, hi):
    s, z = qz.act_qparams(lo, hi)
    q = np.clip(np.round(x / s) + z, 0, 255)
    return float(np.mean(((q - z) * s - x) ** 2))


def test_mse_range_has_the_least_quantization_error():
    from passes.calibration import HistogramObserver

    rng = np.random.default_rng(3)
    x = rng.laplace(size=200_000).astype(np.float32)  # heavy tails: clipping pays
    obs = HistogramObserver("mse", percentile=99.999)
    for part in np.split(x, 4):
        obs.update(part)
    err = {m: _fake_quant_mse(x, *obs.range_for(m)) for m in ("minmax", "percentile", "mse")}
    # the search works on the histogram (bin centres, D^2 / 12 rounding): within 2% of the
    # best real error, and clearly better than the full range
    assert err["mse"] < 0.9 * err["minmax"] and err["mse"] <= 1.02 * err["percentile"]
    lo, hi = obs.range_for("mse")
    assert x.min() < lo < 0 < hi < x.max()


def test_auto_ranges_pick_the_least_layer_noise_and_lower_as_that_method():
    from compiler.cost.layer_proxy import speed_proxy
    from compiler.precision_api import apply_precision
    from passes.calibration import AUTO_METHODS
    from targets.devices import get_profile

    feeds = _feeds(6)
    g = import_onnx(_model())
    rep = apply_precision(g, get_profile("host"), "onnxruntime", "int8", feeds, {},
                          proxy=speed_proxy(g, get_profile("host"), "onnxruntime"))
    cal = rep["calibration"]
    totals = cal["summed_layer_noise"]
    assert set(totals) == set(AUTO_METHODS)
    assert cal["picked"] == min(totals, key=lambda m: (totals[m], AUTO_METHODS.index(m)))
    g2 = import_onnx(_model())
    apply_precision(g2, get_profile("host"), "onnxruntime", "int8", feeds,
                    {"calibration_method": cal["picked"]},
                    proxy=speed_proxy(g2, get_profile("host"), "onnxruntime"))
    assert export_onnx(g).SerializeToString() == export_onnx(g2).SerializeToString()
