"""Real accuracy: mixed INT8 on trained digits models keeps top-1 within 1 point of FP32."""

from __future__ import annotations

import pytest

from compiler.cost.layer_proxy import speed_proxy
from compiler.onnx_io import export_onnx, import_onnx
from compiler.precision_api import apply_precision
from compiler.zoo import trained
from targets.devices import get_profile
from tests.stand_ins import no_vnni_host, vnni_host

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", trained.NAMES)
@pytest.mark.parametrize("profile", ["vnni", "no-vnni"])
def test_mixed_int8_keeps_top1(name, profile):
    prof = vnni_host() if profile == "vnni" else no_vnni_host()
    path = trained.get(name)
    d = trained.digits_data()
    fp32 = trained.accuracy(path, d["test_x"], d["test_y"])
    g = import_onnx(str(path))
    rep = apply_precision(g, prof, "onnxruntime", "mixed", trained.calibration_feeds(64, 8),
                          {}, proxy=speed_proxy(g, prof, "onnxruntime"))
    mixed = trained.accuracy(export_onnx(g), d["test_x"], d["test_y"])
    kept = {k: v["reason"] for k, v in rep["layers"].items() if v["precision"] != "int8"}
    print(f"\n{name} on {profile}: fp32 {fp32:.2f}% mixed {mixed:.2f}% "
          f"({rep['totals']['int8']}/{rep['totals']['layers']} layers int8, measured SQNR "
          f"{rep['totals']['measured_sqnr_db']:.1f} dB); stayed float:")
    for k, why in kept.items():
        print(f"  {k}: {why}")
    assert fp32 > 95.0  # the model really learned the task
    assert rep["totals"]["int8"] >= 1
    assert mixed >= fp32 - 1.0


def test_full_int8_also_close_on_cnn():
    path = trained.get("digits_cnn")
    d = trained.digits_data()
    g = import_onnx(str(path))
    rep = apply_precision(g, get_profile("host"), "onnxruntime", "int8",
                          trained.calibration_feeds(64, 8), {},
                          proxy=speed_proxy(g, get_profile("host"), "onnxruntime"))
    assert rep["totals"]["int8"] == rep["totals"]["layers"]
    fp32 = trained.accuracy(path, d["test_x"], d["test_y"])
    assert trained.accuracy(export_onnx(g), d["test_x"], d["test_y"]) >= fp32 - 1.0
