"""The trained digits MLP and digits CNN on the KV260: C simulation equal to the fixed-point
reference, top-1 within 1 point of FP32 on the held-out split, widths and reuse factors in the
manifest, predicted latency and resources within the device."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from compiler import compile
from compiler.fixed_sim import simulate
from compiler.fpga_layers import WEIGHT_KINDS, input_type, layers_from_graph

pytest.importorskip("hls4ml", reason="the fpga extra (hls4ml) is not installed")
pytest.importorskip("torch", reason="training the digits models needs torch")
pytest.importorskip("sklearn", reason="the digits data ship with scikit-learn")
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("g++") is None, reason="g++ builds the C-sim")]


def _case(name):
    from compiler.zoo import trained

    size = trained.input_size(name)
    d = trained.digits_data(size)
    return (trained.get(name), trained.calibration_feeds(n=128, batch=32, size=size),
            d["test_x"], d["test_y"])


# Known bug (issue #19, open): the fixed-point policy leaves a layer of the digits CNN
# untyped, so emit refuses it ("the graph has no fixed-point types"). strict: the mark fails
# the suite once the CNN compiles, so it is removed with the fix.
_CNN_UNTYPED = pytest.mark.xfail(strict=True, raises=Exception,
                                 reason="fixed-point policy leaves a digits-CNN layer untyped")


@pytest.mark.parametrize("name,io_type", [("digits_mlp", "io_parallel"),
                                          pytest.param("digits_cnn", "io_stream",
                                                       marks=_CNN_UNTYPED)])
def test_digits_on_kv260(tmp_path, name, io_type):
    from compiler.zoo.trained import accuracy

    path, calib, x, y = _case(name)
    art = compile(str(path), "kv260", precision="fixed", calibration=calib,
                  constraints={"max_accuracy_drop": 0.01}, out_dir=str(tmp_path / name))
    m = art.manifest
    hls = m["hls"]
    assert hls["io_type"] == io_type and hls["csim_check"]["equal"] is True
    # per-layer widths (manifest precision report) and reuse factors (hls report)
    weighted = {k: v for k, v in m["precision"]["layers"].items() if v["kind"] in WEIGHT_KINDS}
    assert weighted and all(v["weight"].startswith("fixed<") and v["accum"] and v["result"]
                            for v in weighted.values())
    assert all(hls["layers"][k]["reuse_factor"] >= 1 for k in weighted)
    est = hls["estimate"]
    assert est["dsp"] <= 1248 and est["lut"] <= 117_120 and est["bram36"] <= 144
    assert 0 < est["latency_us"] == pytest.approx(est["latency_cycles"] * 5e-3, rel=1e-3)
    assert m["predicted"]["latency_ms"] > 0
    # accuracy: the C simulation on the held-out split vs FP32 in ONNX Runtime
    got = art.run({"pixel_values": x})["logits"]
    acc = float(np.mean(got.argmax(-1) == y) * 100)
    fp32 = accuracy(path, x, y)
    assert acc >= fp32 - 1.0, (acc, fp32)
    # and the C simulation equals the exact reference of the lowered graph on real images
    g = _lowered_with_types(path, calib)
    ref = simulate(layers_from_graph(g), input_type(g), x[:64])
    np.testing.assert_array_equal(got[:64], ref)


def _lowered_with_types(path, calib):
    """The graph compile() lowers, with the same fixed-point assignment."""
    import passes.fusion  # noqa: F401
    from compiler.driver import optimize
    from compiler.pipeline import PassManager
    from compiler.precision_api import apply_precision, top1_disagreement
    from passes.base import PassContext, get_pass
    from targets.devices import get_profile

    kv = get_profile("kv260")
    g = optimize(str(path), pipeline="simplify", target="kv260", backend="hls")
    PassManager([get_pass("fusion", rule_sets=("conv_bn",))]).run(
        g, PassContext(profile=kv, backend=None))
    apply_precision(g, kv, "hls", "fixed", calib, {"max_metric_loss": 0.01},
                    metric=top1_disagreement)
    return g
