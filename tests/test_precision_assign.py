"""Precision assignment: target rules, budget monotonicity, determinism, report, the pass."""

from __future__ import annotations

import dataclasses

import pytest

from compiler.cost.layer_proxy import speed_proxy
from compiler.onnx_io import export_onnx, import_onnx
from compiler.precision_api import apply_precision
from compiler.zoo import trained
from passes.base import PassContext, get_pass
from passes.precision import LayerInfo, RooflineProxy, order_layers
from targets.devices import get_profile
from tests.stand_ins import no_vnni_host, vnni_host


@pytest.fixture(scope="module")
def cnn():
    return trained.get("digits_cnn")


@pytest.fixture(scope="module")
def vit():
    return trained.get("digits_vit")


def _apply(path, profile, constraints=None, precision="mixed"):
    g = import_onnx(str(path))
    rep = apply_precision(g, profile, "openvino", precision,
                          trained.calibration_feeds(32, 8), constraints or {},
                          proxy=speed_proxy(g, profile, "openvino"))
    return g, rep


def _int8(rep):
    return {k for k, v in rep["layers"].items() if v["precision"] == "int8"}


def test_no_vnni_cpu_keeps_small_and_depthwise_convs_and_attention_float(cnn, vit):
    prof = no_vnni_host()
    _, rep = _apply(cnn, prof)
    lay = rep["layers"]
    dw = next(v for v in lay.values() if v["depthwise"])
    assert dw["precision"] == "fp32" and "depthwise" in dw["reason"]
    first = next(iter(lay.values()))  # 3x3 conv on 1 channel: reduction 9
    assert first["precision"] == "fp32" and "reduction of 9" in first["reason"]
    assert rep["totals"]["int8"] >= 2  # the big convs still pay
    _, rep = _apply(vit, prof)
    att = [v for v in rep["layers"].values() if v["dynamic"]]
    assert len(att) == 4 and all(v["precision"] == "fp32" and "attention" in v["reason"]
                                 for v in att)
    # with VNNI the no-dot-product rule does not apply; the calibrated cost model of this
    # host keeps them float for what its runtimes measured (no int8 gain on attention blocks)
    _, rep = _apply(vit, vnni_host())
    att = [v for v in rep["layers"].values() if v["dynamic"]]
    assert all("dot product" not in v["reason"] and "measured no faster" in v["reason"]
               for v in att)


def test_budget_monotone_and_deterministic(cnn):
    prof = vnni_host()
    sets = []
    for db in (20.0, 36.0, 40.0, 44.0, 60.0):
        _, rep = _apply(cnn, prof, {"min_sqnr_db": db, "calibration_method": "minmax"})
        sets.append(_int8(rep))
        assert rep["budget"]["min_sqnr_db"] == db
        if rep["totals"]["int8"]:
            assert rep["budget"]["measured"]["sqnr_db"] >= db
    for looser, tighter in zip(sets, sets[1:]):
        assert tighter <= looser
    assert len(sets[0]) > len(sets[-1])  # the budget really binds somewhere
    g1, r1 = _apply(cnn, prof, {"min_sqnr_db": 40.0})
    g2, r2 = _apply(cnn, prof, {"min_sqnr_db": 40.0})
    assert r1 == r2
    assert export_onnx(g1).SerializeToString() == export_onnx(g2).SerializeToString()


def test_user_metric_budget(cnn):
    import numpy as np

    def disagreement(ref, out):
        a = np.concatenate([np.argmax(r["logits"], -1) for r in ref])
        b = np.concatenate([np.argmax(o["logits"], -1) for o in out])
        return float(np.mean(a != b))

    g = import_onnx(str(cnn))
    rep = apply_precision(g, vnni_host(), "openvino", "mixed", trained.calibration_feeds(32, 8),
                          {"max_metric_loss": 0.0}, metric=disagreement,
                          proxy=speed_proxy(g, vnni_host(), "openvino"))
    assert rep["budget"]["kind"] == "metric" and rep["budget"]["measured"]["metric"] == 0.0
    assert all(v["sensitivity"] is None or "metric" in v["sensitivity"]
               for v in rep["layers"].values())


def test_order_is_cheapest_noise_per_gain_first():
    costs = {"a": 5.0, "b": 1.0, "c": 1.0}
    gains = {"a": 10.0, "b": 1.0, "c": 1.0, "d": -1.0}
    order = order_layers(costs, gains, {"a": 0, "b": 1, "c": 2, "d": 3})
    assert order == ["a", "b", "c"]  # 0.5, 1.0, 1.0 per unit gain; d is never a candidate


def test_proxy_rules():
    prof, proxy = no_vnni_host(), RooflineProxy()
    big = LayerInfo("c", "Conv", 0, 50e6, 64 * 64 * 9, 64 * 32 * 32, 64 * 32 * 32, 576, False,
                    False)
    dw = dataclasses.replace(big, macs=64 * 32 * 32 * 9, weight_elems=576, reduction=9,
                             depthwise=True)
    t = {lay.name + str(lay.depthwise): (proxy.layer_time(lay, "fp32", prof)[0],
                                         proxy.layer_time(lay, "int8", prof)[0])
         for lay in (big, dw)}
    assert t["cFalse"][1] < t["cFalse"][0]  # a big conv gains
    assert t["cTrue"][1] > t["cTrue"][0]  # a depthwise conv loses
    npu = get_profile("ethos-u55-128")
    assert proxy.layer_time(big, "fp32", npu)[0] > 0  # no fp32 peak: judged at int8 rate


def test_pass_registered_and_reports(cnn):
    p = get_pass("precision", precision="mixed", min_sqnr_db=30.0)
    g = import_onnx(str(cnn))
    ctx = PassContext(profile=no_vnni_host(), backend="openvino",
                      options={"calibration": trained.calibration_feeds(16, 8)},
                      speed_proxy=speed_proxy)
    res = p.run(g, ctx)
    rep = res.stats["report"]
    assert res.modified and rep["budget"]["min_sqnr_db"] == 30.0
    for v in rep["layers"].values():
        assert set(v) >= {"precision", "sensitivity", "reason"}


def test_attention_int8_is_a_measured_fact_of_device_and_backend(vit):
    """Attention MatMuls go int8 only where the calibration of (device, backend) measured its
    attention-only cases faster at int8; never measured or measured slower: float, saying why.
    A unit without an int8 dot product keeps them float first."""
    from compiler.cost.layer_proxy import CostModelProxy
    from compiler.cost.params import load_calibration

    prof = vnni_host()
    params = load_calibration(prof, "openvino").params_for(prof)
    att = LayerInfo("a", "MatMul", 0, 64.0 * 256 * 256, 0, 2 * 64 * 256, 256 * 256, 64, False,
                    True)
    fast = CostModelProxy("openvino", params, "test", attention=(("attn_s256", 0.118, 0.06),))
    slow = CostModelProxy("openvino", params, "test", attention=(("attn_s256", 0.118, 0.146),))
    never = CostModelProxy("openvino", params, "test")
    tf = fast.layer_time(att, "fp32", prof)[0]
    ti, why = fast.layer_time(att, "int8", prof)
    assert ti < tf and why == ""
    ti, why = slow.layer_time(att, "int8", prof)
    assert ti > tf and "measured no faster" in why and "0.118 -> 0.146 ms" in why
    ti, why = never.layer_time(att, "int8", prof)
    assert ti > tf and "never measured" in why
    assert "dot product" in fast.layer_time(att, "int8", no_vnni_host())[1]
    # the assignment follows the fact: with the measured gain, the ViT's attention goes int8
    g = import_onnx(str(vit))
    rep = apply_precision(g, prof, "openvino", "mixed", trained.calibration_feeds(16, 8),
                          {"min_sqnr_db": 10.0}, proxy=fast)
    att_layers = [v for v in rep["layers"].values() if v["dynamic"]]
    assert att_layers and all(v["precision"] == "int8" for v in att_layers)
