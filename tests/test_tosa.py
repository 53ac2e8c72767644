"""TOSA / Ethos-U backend: rescale math, lowering bit-exact against the TOSA reference model,
Vela's estimate as the prediction, partitioning with reasons, and bad input (exit 2, nothing
written)."""

from __future__ import annotations

import json
import os
from fractions import Fraction

import numpy as np
import pytest

from compiler import compile
from compiler.errors import CompileError, ConstraintError, UnsupportedOpError
from targets.tosa_ref import apply_scale_32, quantize_multiplier

pytest.importorskip("tosa_serializer", reason="tosa-tools (edgec[npu]) not installed")
pytest.importorskip("ethosu.vela", reason="ethos-u-vela (edgec[npu]) not installed")

from compiler.zoo import npu  # noqa: E402


def _calib(shape, n=4, seed=0):
    rng = np.random.default_rng(seed)
    return [{"input": rng.normal(0, 1, shape).astype(np.float32)} for _ in range(n)]


@pytest.mark.parametrize("scale", [1e-6, 3.1e-4, 0.0123, 0.5, 0.999, 1.0, 7.5, 1000.0])
def test_quantize_multiplier_is_exact_to_31_bits(scale):
    m, s = quantize_multiplier(scale)
    assert 2 <= s <= 62 and (1 << 30) <= m < (1 << 31)
    assert abs(Fraction(m, 1 << s) - Fraction(scale)) <= Fraction(scale) / (1 << 30)


def test_apply_scale_matches_big_integer_rounding():
    rng = np.random.default_rng(0)
    v = rng.integers(-2**31, 2**31, 2000)
    for m, s in [(1518500250, 33), (1 << 30, 31), (1932735283, 40), (1073741825, 12)]:
        got = apply_scale_32(v, m, s, double_round=False)
        want = [(int(x) * m + (1 << (s - 1))) >> s for x in v]  # round half up, exact
        assert got.tolist() == want


def _read(path):
    with open(path) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def ds_cnn_u55(tmp_path_factory):
    out = tmp_path_factory.mktemp("ds") / "b"
    art = compile(npu.ds_cnn(), target="ethos-u55-128", precision="int8",
                  calibration=_calib((1, 1, 49, 10)), out_dir=str(out))
    return art, out


def test_ds_cnn_all_on_npu_bit_exact_and_vela_prediction(ds_cnn_u55):
    art, out = ds_cnn_u55
    m = art.manifest
    assert m["backend"] == "tosa"
    assert m["legality"]["fallback"] == {} and m["legality"]["accelerated"] == 21
    rep = _read(out / "npu_report.json")
    assert rep["bit_exact"]["max_abs_diff_lsb"] == 0 and rep["bit_exact"]["cases"] >= 8
    assert rep["bit_exact"]["calibration_cases"] >= 4
    v = rep["vela"]
    assert v["cycles"] > 0 and v["cpu_ops"] == 0 and v["npu_ops"] > 0
    assert v["system_config"] == "Ethos_U55_High_End_Embedded"
    # the prediction is Vela's: cycles / core clock
    assert m["predicted"]["npu_cycles"] == v["cycles"]
    assert m["predicted"]["latency_ms"] == pytest.approx(v["cycles"] / 500e6 * 1e3, rel=1e-6)
    assert m["verification"]["passed"] is True
    for f in ("npu_0.tosa", "npu.json", "README.md", "vela/npu_0/npu_0_vela.npz"):
        assert (out / f).exists(), f
    (seg,) = _read(out / "npu.json")["segments"]
    tosa_ops = seg["tosa_ops"]
    assert tosa_ops.count("DEPTHWISE_CONV2D") == 4 and "AVG_POOL2D" in tosa_ops


@pytest.mark.parametrize("target,system", [("ethos-u65-256", "Ethos_U65_Embedded"),
                                           ("ethos-u85-256", "Ethos_U85_SYS_DRAM_Mid")])
def test_ds_cnn_compiles_for_u65_and_u85(tmp_path, target, system):
    art = compile(npu.ds_cnn(), target=target, precision="int8",
                  calibration=_calib((1, 1, 49, 10), 2), out_dir=str(tmp_path / "b"))
    rep = _read(tmp_path / "b" / "npu_report.json")
    assert rep["vela"]["system_config"] == system and rep["vela"]["cycles"] > 0
    assert rep["bit_exact"]["max_abs_diff_lsb"] == 0
    assert art.manifest["legality"]["fallback"] == {}


def test_lowering_matches_reference_model_on_every_op_kind():
    """MobileNetV2 at 32 px / width 0.35 has Conv, depthwise Conv, ReLU6 (Clip), residual Add,
    global pooling, Flatten and Gemm; the TOSA reference model must agree bit for bit."""
    from compiler.driver import load_graph
    from compiler.search import lower_graph
    from targets import tosa_lower as tl
    from targets.devices import get_profile
    from targets.tosa_emit import run_reference_model, serialize
    from targets.tosa_ref import run_program

    g = load_graph(npu.mobilenet_v2(32, 0.35, 10))
    feeds = _calib((1, 3, 32, 32), 1)[0]
    c = lower_graph(g, {"backend": "tosa", "precision": "int8"}, get_profile("ethos-u85-256"),
                    feeds=feeds)
    shapes = tl.static_shapes(c, {"input": (1, 3, 32, 32)})
    caps = tl.caps_for("ethos-u85-256")
    nodes = tl.compute_nodes(c)
    assert all(tl.check(n, caps, shapes) is None for n in nodes)
    prog = tl.lower(c, nodes, caps, shapes)
    ops = {o.op for o in prog.ops}
    assert {"CONV2D", "DEPTHWISE_CONV2D", "ADD", "RESCALE", "AVG_POOL2D"} <= ops
    fb = serialize(prog)
    rng = np.random.default_rng(1)
    for _ in range(3):
        x = rng.integers(-128, 128, prog.tensors[prog.inputs[0]].shape).astype(np.int8)
        got = run_reference_model(fb, [x])[0]
        want = run_program(prog, {prog.inputs[0]: x})[prog.outputs[0]]
        np.testing.assert_array_equal(got, want)


def test_softmax_runs_on_host_with_reason_and_fallback_off_is_an_error(tmp_path):
    m = npu.conv_softmax()
    art = compile(m, target="ethos-u55-128", precision="int8",
                  calibration=_calib((1, 3, 8, 8)), out_dir=str(tmp_path / "ok"))
    fb = art.manifest["legality"]["fallback"]
    assert len(fb) == 1
    (why,) = fb.values()
    assert "Softmax" in why and "Cortex-M" in why
    segs = _read(tmp_path / "ok" / "npu.json")["segments"]
    assert [s["kind"] for s in segs] == ["npu", "host"] and segs[1]["ops"] == ["Softmax"]
    assert (tmp_path / "ok" / segs[1]["file"]).exists()
    assert art.manifest["verification"]["passed"] is True
    with pytest.raises(UnsupportedOpError, match="Softmax"):
        compile(m, target="ethos-u55-128", precision="int8", calibration=_calib((1, 3, 8, 8)),
                constraints={"allow_fallback": False}, out_dir=str(tmp_path / "no"))
    assert not (tmp_path / "no").exists()


def test_every_host_node_has_a_reason():
    from compiler.driver import load_graph
    from targets.base import get_backend
    from targets.devices import get_profile

    rep = get_backend("tosa").legality(load_graph(npu.conv_softmax()),
                                       get_profile("ethos-u65-256"))
    assert rep.fallback and all(v.strip() for v in rep.fallback.values())


def test_model_too_big_for_sram_is_a_constraint_error(tmp_path):
    with pytest.raises(ConstraintError, match="SRAM"):
        compile(npu.big_activation(512), target="ethos-u55-128", precision="int8",
                calibration=_calib((1, 16, 512, 512), 1), out_dir=str(tmp_path / "b"))
    assert not (tmp_path / "b").exists()


def test_float_request_is_an_error(tmp_path):
    with pytest.raises(CompileError, match="int8"):
        compile(npu.ds_cnn(), target="ethos-u85-256", precision="fp32",
                out_dir=str(tmp_path / "f"))
    assert not (tmp_path / "f").exists()


@pytest.mark.parametrize("argv_extra", [["--precision", "fp32"], ["--precision", "int8"]])
def test_cli_bad_input_exit_2_nothing_written(tmp_path, argv_extra):
    import onnx

    from compiler.cli import main

    path = tmp_path / "m.onnx"
    big = npu.big_activation(512) if "int8" in argv_extra else npu.ds_cnn()
    onnx.save(big, str(path))
    calib = tmp_path / "calib"
    calib.mkdir()
    shape = (1, 16, 512, 512) if "int8" in argv_extra else (1, 1, 49, 10)
    np.save(calib / "input.npy", np.zeros(shape, np.float32))
    out = tmp_path / "out"
    rc = main(["compile", str(path), "--target", "ethos-u55-128", "--out", str(out),
               "--calib", str(calib), *argv_extra])
    assert rc == 2
    assert not out.exists()


@pytest.mark.slow
def test_digits_cnn_on_u55_within_one_point_of_fp32(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from compiler.zoo import trained

    path = trained.get("digits_cnn")
    art = compile(str(path), target="ethos-u55-128", precision="int8",
                  calibration=trained.calibration_feeds(64, 8), out_dir=str(tmp_path / "d"))
    from targets.tosa_run import TosaRunner

    runner = TosaRunner(str(tmp_path / "d"))
    d = trained.digits_data()
    x, y = d["test_x"][:200], d["test_y"][:200]
    pred = runner.run({"pixel_values": x})["logits"].argmax(-1)
    acc_npu = float(np.mean(pred == y) * 100)
    acc_fp32 = trained.accuracy(str(path), x, y)
    assert acc_npu >= acc_fp32 - 1.0, (acc_npu, acc_fp32)
    assert os.path.exists(tmp_path / "d" / "vela" / "npu_0" / "npu_0_vela.npz")
    assert art.manifest["predicted"]["npu_cycles"] > 0
