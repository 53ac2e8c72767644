"""compile(pruning=...), compiler.prune and `edgec compile --prune`: the manifest's pruning
report, verification against the pruned graph, channel alignment, bad options."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import compiler
from compiler.cli import main
from compiler.errors import ConstraintError
from compiler.ir import constant_value


def _net(c1: int = 32, c2: int = 48) -> onnx.ModelProto:
    rng = np.random.default_rng(0)

    def init(name, *shape):
        return onnx.numpy_helper.from_array(
            (rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32), name)

    nodes = [h.make_node("Conv", ["x", "w1", "b1"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["a"], ["ar"]),
             h.make_node("Conv", ["ar", "w2", "b2"], ["b"], name="conv2", pads=[1, 1, 1, 1]),
             h.make_node("Relu", ["b"], ["br"]),
             h.make_node("GlobalAveragePool", ["br"], ["p"]),
             h.make_node("Flatten", ["p"], ["f"]),
             h.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc", transB=1)]
    g = h.make_graph(nodes, "net", [h.make_tensor_value_info("x", T.FLOAT, ["batch", 3, 8, 8])],
                     [h.make_tensor_value_info("logits", T.FLOAT, ["batch", 10])],
                     [init("w1", c1, 3, 3, 3), init("b1", c1), init("w2", c2, c1, 3, 3),
                      init("b2", c2), init("w3", 10, c2), init("b3", 10)])
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def _calib(n=4):
    rng = np.random.default_rng(1)
    return [{"x": rng.standard_normal((8, 3, 8, 8)).astype(np.float32)} for _ in range(n)]


def _weights(path_or_model):
    """Weight shapes by the layer they came from (fusion renames Conv+Relu to FusedConv)."""
    g = compiler.import_onnx(path_or_model)
    return {n.inputs[1].name.split("/")[0]: constant_value(n.inputs[1]).shape for n in g
            if n.op_type in ("Conv", "FusedConv", "Gemm")}


def test_compile_with_pruning_reports_groups_recovery_and_distance(tmp_path):
    art = compiler.compile(_net(), target="host", backend="onnxruntime", precision="fp32",
                           pruning={"ratio": 0.4, "align": 1}, calibration=_calib(),
                           out_dir=tmp_path / "b")
    pr = art.manifest["pruning"]
    assert pr["flops_removed"] >= 0.35 and pr["importance"] == "wifv"
    groups = {g["group"]: g for g in pr["groups"]}
    assert set(groups) == {"conv1", "conv2"}
    assert all(g["kept"] + g["removed"] == g["units"] for g in groups.values())
    assert [u["name"] for u in pr["unprunable"]] == ["fc"]
    layers = {r["layer"]: r for r in pr["layers"]}
    assert set(layers) <= {"conv2", "fc"} and layers
    for r in layers.values():
        assert r["recovery"] == min(r["error"], key=r["error"].get)
    d = pr["distance"]
    assert d["samples"] == 4 and 0 < d["cosine"] <= 1 and "top-1" in d["metric_name"]
    # the bundle verifies against the pruned graph, and its weights are the pruned ones
    assert art.verification["passed"] is True
    shapes = _weights(str(tmp_path / "b" / "model.onnx"))
    assert shapes["conv1"][0] == groups["conv1"]["kept"]
    assert shapes["conv2"] == (groups["conv2"]["kept"], groups["conv1"]["kept"], 3, 3)
    assert shapes["fc"] == (10, groups["conv2"]["kept"])


def test_target_alignment_rounds_kept_channels():
    g, rep = compiler.prune(_net(), 0.3, target="jetson-orin-agx", return_report=True)
    assert rep["align"] == 16
    for grp in rep["groups"]:
        assert grp["kept"] % 16 == 0 and grp["kept"] >= 16
    shapes = {n.name: constant_value(n.inputs[1]).shape for n in g if n.op_type == "Conv"}
    assert shapes["conv1"][0] % 16 == 0
    assert rep["note"].startswith("no calibration")  # magnitude only, no reconstruction
    assert rep["recovery"] == "none" and rep["layers"] == []


def test_prune_returns_the_graph_and_leaves_the_input_model_alone():
    m = _net()
    before = m.SerializeToString()
    g = compiler.prune(m, {"ratio": 0.5, "importance": "magnitude"})
    assert isinstance(g, compiler.Graph) and m.SerializeToString() == before
    assert constant_value(next(n for n in g if n.name == "conv2").inputs[1]).shape[0] < 48


@pytest.mark.parametrize("bad", ["lots", 1.5, -0.1, {"ratio": 0.2, "speed": 1}, True])
def test_bad_pruning_options_are_refused(bad):
    with pytest.raises(ConstraintError):
        compiler.compile(_net(), target="host", backend="onnxruntime", pruning=bad)


def test_cli_prune(tmp_path, capsys):
    path = tmp_path / "m.onnx"
    onnx.save_model(_net(), str(path))
    out = tmp_path / "bundle"
    assert main(["compile", str(path), "--backend", "onnxruntime", "--out", str(out),
                 "--prune", "0.5", "--json", "--shape", "x=2x3x8x8"]) == 0
    doc = json.loads(capsys.readouterr().out)
    # kept counts follow this host's detected channel alignment, so the amount varies a little
    assert doc["pruning"]["flops_removed"] > 0.1
    align = doc["pruning"]["align"]
    assert all(g["kept"] % align == 0 for g in doc["pruning"]["groups"])
    assert doc["verification"]["passed"] is True
    assert main(["compile", str(path), "--out", str(tmp_path / "x"), "--prune", "2"]) == 2
    assert "ratio" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_auto_pruning_picks_the_fastest_candidate_within_budget():
    g, rep = compiler.prune(_net(), "auto", calibration=_calib(), return_report=True)
    auto = rep["auto"]
    assert auto["tried"] and auto["budget"] == 0.01
    ok = [t for t in auto["tried"] if t["within_budget"]]
    if auto["chosen"] is None:
        assert not ok
    else:
        chosen = next(t for t in auto["tried"] if t["target"] == auto["chosen"])
        assert chosen["within_budget"] and chosen["metric"] <= 0.01
        assert chosen["predicted_ms"] == min(t["predicted_ms"] for t in ok)
        assert auto["predicted_ms"] <= auto["predicted_ms_unpruned"]
    with pytest.raises(ConstraintError, match="calibration"):
        compiler.prune(_net(), "auto")


def test_host_channel_alignment_follows_the_simd_width():
    from targets.host import channel_alignment

    assert channel_alignment(("sse4_2", "avx", "avx2", "fma"), "x86_64") == 8
    assert channel_alignment(("avx2", "avx512f", "avx512bw"), "x86_64") == 16
    assert channel_alignment(("sse4_2",), "x86_64") == 1
    assert channel_alignment(("neon",), "aarch64") == 1
