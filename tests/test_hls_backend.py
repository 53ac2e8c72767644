"""The hls backend end to end: fixed-point policy -> hls4ml project -> g++ C simulation,
bit-exact against edgec's fixed-point reference; legality; the too-large model."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
from onnx import helper

from compiler import compile, load
from compiler.cli import main
from compiler.errors import ConstraintError
from compiler.fixed_sim import simulate
from compiler.fpga_layers import input_type, layers_from_graph
from compiler.onnx_io import import_onnx
from targets.base import get_backend
from targets.devices import get_profile
from tests.helpers import const, make_model, run_ort, tensor_info

hls4ml = pytest.importorskip("hls4ml", reason="the fpga extra (hls4ml) is not installed")
needs_gxx = pytest.mark.skipif(shutil.which("g++") is None,
                               reason="g++ builds hls4ml's C simulation")


def _mlp(sizes=(12, 16, 4), seed=0, scale=0.4):
    rng = np.random.default_rng(seed)
    nodes, inits, cur = [], [], "x"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        inits += [const(rng.normal(size=(b, a)).astype(np.float32) * scale, f"w{i}"),
                  const(rng.normal(size=b).astype(np.float32) * 0.1, f"b{i}")]
        nodes.append(helper.make_node("Gemm", [cur, f"w{i}", f"b{i}"], [f"g{i}"],
                                      name=f"fc{i}", transB=1))
        cur = f"g{i}"
        if i < len(sizes) - 2:
            nodes.append(helper.make_node("Relu", [cur], [f"r{i}"], name=f"relu{i}"))
            cur = f"r{i}"
    nodes[-1].output[0] = "y"
    return make_model(nodes, [tensor_info("x", shape=["n", sizes[0]])],
                      [tensor_info("y", shape=["n", sizes[-1]])], inits)


def _calib(n_in, n=4, batch=16, seed=1):
    rng = np.random.default_rng(seed)
    return [{"x": rng.normal(size=(batch, n_in)).astype(np.float32)} for _ in range(n)]


@needs_gxx
def test_mlp_bundle_csim_equals_fixed_point_reference(tmp_path):
    model = _mlp()
    out = tmp_path / "kv260"
    art = compile(model, "kv260", precision="fixed", calibration=_calib(12),
                  out_dir=str(out))
    m = art.manifest
    assert m["backend"] == "hls" and m["config"]["precision"] == "fixed"
    hls = m["hls"]
    assert hls["part"] == "xck26-sfvc784-2LV-c" and hls["clock_ns"] == 5.0
    assert hls["io_type"] == "io_parallel"
    assert hls["csim_check"]["equal"] is True and hls["csim_check"]["max_abs_diff"] == 0.0
    for f in ("build.sh", "README.md", "hls_report.json", "csim/libedgec_model.so",
              "hls_prj/firmware/edgec_model.cpp", "hls_prj/build_prj.tcl",
              "hls_prj/firmware/parameters.h"):
        assert (out / f).is_file(), f
    # per-layer types and reuse factors: in the manifest and in the generated firmware
    defines = (out / "hls_prj/firmware/defines.h").read_text()
    params = (out / "hls_prj/firmware/parameters.h").read_text()
    for name in ("fc0", "fc1"):
        layer = m["precision"]["layers"][name]
        w = layer["weight"].replace("fixed<", "").rstrip(">").split(",")
        assert f"ap_fixed<{w[0]},{w[1]},AP_RND,AP_SAT" in defines
        assert hls["layers"][name]["reuse_factor"] >= 1
        assert f"reuse_factor = {hls['layers'][name]['reuse_factor']}" in params
    est = hls["estimate"]
    assert est["dsp"] <= 1248 and est["lut"] <= 117_120 and est["bram36"] <= 144
    assert est["latency_cycles"] > 0 and est["latency_us"] == pytest.approx(
        est["latency_cycles"] * 5e-3, rel=1e-3)
    # the loaded bundle (ctypes, no rebuild) equals the exact reference on fresh inputs
    g = import_onnx(model)
    from compiler.precision_api import apply_precision

    apply_precision(g, get_profile("kv260"), "hls", "fixed", _calib(12), {})
    layers, in_t = layers_from_graph(g), input_type(g)
    x = np.random.default_rng(5).normal(size=(20, 12)).astype(np.float32)
    got = load(str(out)).run({"x": x})["y"]
    np.testing.assert_array_equal(got, simulate(layers, in_t, x))
    # and stays close to FP32 (the default budget: 25 dB SQNR on the calibration set)
    ref = run_ort(model, {"x": x})["y"].astype(np.float64)
    assert float(((got - ref) ** 2).sum() / (ref ** 2).sum()) <= 10 ** -2.0
    assert m["verification"]["passed"] is True


def test_legality_names_the_node_that_breaks_the_chain():
    model = _mlp()
    g = model.graph
    g.node.append(helper.make_node("Add", ["y", "y"], ["z"], name="residual"))
    g.output[0].name = "z"
    rep = get_backend("hls").legality(import_onnx(model), get_profile("kv260"))
    assert not rep.ok and "residual" in rep.unsupported


def test_model_too_large_for_kv260_is_an_error_and_writes_nothing(tmp_path):
    model = _mlp(sizes=(512, 2048, 1024, 10), scale=0.05)
    out = tmp_path / "big"
    with pytest.raises(ConstraintError, match="smallest footprint reachable"):
        compile(model, "kv260", precision="fixed", calibration=_calib(512, n=1, batch=4),
                out_dir=str(out), verify=False)
    assert not out.exists() and os.listdir(tmp_path) == []
    # the CLI: exit 2, one line, nothing written
    path, calib = tmp_path / "big.onnx", tmp_path / "calib"
    path.write_bytes(model.SerializeToString())
    calib.mkdir()
    np.save(calib / "x.npy", _calib(512, n=1, batch=4)[0]["x"])
    assert main(["compile", str(path), "--target", "kv260", "--precision", "fixed",
                 "--calib", str(calib), "--out", str(out), "--no-verify"]) == 2
    assert not out.exists()


def test_emit_with_the_users_reuse_factor(tmp_path):
    """options["reuse_factor"] overrides the search; emit alone (no g++) writes the project,
    the report and build.sh."""
    from targets.base import BuildConfig

    g = import_onnx(_mlp())
    from compiler.precision_api import apply_precision

    apply_precision(g, get_profile("kv260"), "hls", "fixed", _calib(12), {})
    be = get_backend("hls")
    files = be.emit(g, get_profile("kv260"), BuildConfig(precision="fixed",
                                                         options={"reuse_factor": 4}),
                    str(tmp_path))
    rep = json.loads((tmp_path / "hls_report.json").read_text())
    assert {v["reuse_factor"] for v in rep["layers"].values() if v["kind"] == "dense"} == {4}
    assert rep["reuse_search"] == "user" and "build.sh" in files
    assert "vitis_hls" in (tmp_path / "build.sh").read_text()
