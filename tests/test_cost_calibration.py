"""Calibration fitting on synthetic samples (no timing), files, and predict() plumbing."""

from __future__ import annotations

import pytest

from compiler.cost.calibration import (
    Calibration,
    Sample,
    fit,
    fit_memory,
    load_calibration,
    predict_sample,
    save_calibration,
)
from compiler.cost.kernels import Kernel
from compiler.cost.model import Params, prior_params
from targets.devices import get_profile


def _samples(truth: Params, profile):
    out = []
    for i, (f, b) in enumerate([(1e6, 1e4), (1e8, 1e5), (1e9, 1e6), (1e5, 1e7), (1e7, 1e8),
                                (3e9, 1e5), (1e4, 1e3), (5e8, 5e7)]):
        ks = [Kernel(f"k{j}", ("Conv",), "conv", "fp32", f, b) for j in range(1 + i % 3)]
        ks += [Kernel("e", ("Add",), "elementwise", "fp32", b / 4, b)]
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
    samples = _samples(truth, prof)
    got = fit(samples, prof, "onnxruntime", prior, weight=1e-6)
    for s in samples:
        assert predict_sample(s, got, prof) == pytest.approx(s.latency_ms, rel=0.02)
    assert got.inv_eff["conv/fp32"] == pytest.approx(4.0, rel=0.05)
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
