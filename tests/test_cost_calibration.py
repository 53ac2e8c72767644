"""Calibration fitting on synthetic samples (no timing), files, and predict() plumbing."""

from __future__ import annotations

import pytest

from compiler.cost.calibration import Sample, fit, fit_memory, predict_sample
from compiler.cost.kernels import Kernel
from compiler.cost.params import (
    Calibration,
    Params,
    load_calibration,
    prior_params,
    save_calibration,
)
from targets.devices import get_profile


def _samples(truth: Params, profile):
    """Models of convs (reduction length and output plane varied), an elementwise kernel and
    a normalisation over rows, timed with `truth`."""
    out = []
    depths, planes = (9, 64, 576, 2304), (49, 196, 784, 3136)
    for i, (f, b) in enumerate([(1e6, 1e4), (1e8, 1e5), (1e9, 1e6), (1e5, 1e7), (1e7, 1e8),
                                (3e9, 1e5), (1e4, 1e3), (5e8, 5e7), (2e8, 2e5), (4e9, 4e6),
                                (6e7, 3e4), (8e8, 1e7)]):
        ks = [Kernel(f"k{j}", ("Conv",), "conv", "fp32", f, b, depths[(i + j) % 4],
                     spatial=planes[(i // 2 + j) % 4]) for j in range(1 + i % 3)]
        ks += [Kernel("e", ("Add",), "elementwise", "fp32", b / 4, b)]
        ks += [Kernel("n", ("Softmax",), "norm", "fp32", b / 2, b, rows=1e3 * (1 + i % 4))]
        s = Sample(f"m{i}", {"backend": "onnxruntime"}, ks, 0.0, 1.0 + i, (i * i) % 5 + 0.3,
                   None)
        s.latency_ms = predict_sample(s, truth, profile)
        s.rss_mb = 1.2 * s.weights_mb + 2.0 * s.acts_mb + 30.0
        out.append(s)
    return out


def test_fit_recovers_known_parameters():
    prof = get_profile("jetson-orin-agx")
    prior = prior_params(prof, "onnxruntime")
    truth = Params.from_dict(prior.to_dict())
    truth.inv_eff = {**prior.inv_eff, "conv/fp32": 4.0}
    truth.inv_bw, truth.launch_us, truth.call_us = 2.0, 8.0, 50.0
    truth.depth_half, truth.spatial_half, truth.row_ns = 40.0, 150.0, 3.0
    samples = _samples(truth, prof)
    got = fit(samples, prof, "onnxruntime", prior, weight=1e-6)
    for s in samples:  # the fit's vectorised time is time_kernels' time
        assert predict_sample(s, got, prof) == pytest.approx(s.latency_ms, rel=0.02)
    assert got.inv_eff["conv/fp32"] == pytest.approx(4.0, rel=0.05)
    assert (got.depth_half, got.spatial_half) == pytest.approx((40.0, 150.0), rel=0.1)
    assert got.inv_eff["attention/int4"] == pytest.approx(prior.inv_eff["attention/int4"])
    mem = fit_memory(samples, got)
    assert (mem.mem_w, mem.mem_a, mem.mem_base_mb) == pytest.approx((1.2, 2.0, 30.0), rel=1e-3)


def test_fit_is_deterministic():
    prof = get_profile("jetson-orin-agx")
    prior = prior_params(prof, "onnxruntime")
    s = _samples(prior, prof)
    assert fit(s, prof, "onnxruntime").to_dict() == fit(s, prof, "onnxruntime").to_dict()


def test_calibration_file_round_trip(tmp_path):
    prof = get_profile("jetson-orin-nx")
    cal = Calibration(prof.name, "tvm", prior_params(prof, "tvm"), "",
                      {"x": 1.0}, [{"case": "a", "median_ms": 1.0}], ["note"])
    save_calibration(cal, tmp_path)
    back = load_calibration(prof, "tvm", tmp_path)
    assert back is not None and back.to_dict() == cal.to_dict()
    assert load_calibration(prof, "onnxruntime", tmp_path) is None
