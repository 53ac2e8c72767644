"""The edgec command: compile, inspect, verify, targets; --json; exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h

from compiler.cli import main
from compiler.onnx_io import import_onnx
from compiler.search import search
from targets.devices import get_profile


def _model(path) -> str:
    w = onnx.numpy_helper.from_array(np.ones((8, 4), np.float32), "W")
    g = h.make_graph([h.make_node("MatMul", ["x", "W"], ["y"], name="mm"),
                      h.make_node("Relu", ["y"], ["z"], name="relu")], "cli",
                     [h.make_tensor_value_info("x", T.FLOAT, ["batch", 8])],
                     [h.make_tensor_value_info("z", T.FLOAT, ["batch", 4])], [w])
    onnx.save_model(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), path)
    return str(path)


def test_compile_json_then_verify(tmp_path, capsys):
    model = _model(tmp_path / "m.onnx")
    out = tmp_path / "bundle"
    assert main(["compile", model, "--target", "host", "--out", str(out), "--json",
                 "--shape", "x=2x8"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["backend"] == "onnxruntime" and doc["verification"]["passed"] is True
    assert doc["verification"]["input_shapes"]["x"] == [2, 8]
    assert main(["verify", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["files_ok"] is True
    (out / "model.onnx").write_bytes(b"broken")
    assert main(["verify", str(out)]) == 2
    assert "sha256" in capsys.readouterr().err


def test_inspect(tmp_path, capsys):
    model = _model(tmp_path / "m.onnx")
    assert main(["inspect", model, "--json", "--shape", "x=4x8"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ops"] == {"MatMul": 1, "Relu": 1}
    assert doc["parameters"] == 32 and doc["opsets"] == {"": 17}
    assert doc["flops"] == 2 * 4 * 8 * 4 + 4 * 4  # MatMul MACs x2 + Relu
    assert doc["inputs"][0]["shape"] == ["batch", 8]
    assert main(["inspect", model]) == 0
    assert "MatMul" in capsys.readouterr().out


def test_targets(capsys):
    assert main(["targets", "--json"]) == 0
    names = [p["name"] for p in json.loads(capsys.readouterr().out)]
    assert "jetson-orin-agx" in names and "raspberry-pi-5" in names and "host" in names
    assert main(["targets"]) == 0
    assert "ethos-u55-128" in capsys.readouterr().out


def test_usage_error_exit_2(capsys):
    assert main(["compile"]) == 2
    assert main(["frobnicate"]) == 2


def test_console_script_entry_point(tmp_path):
    """The installed `edgec` script: progress on stderr, exit 2 for user errors."""
    r = subprocess.run([sys.executable, "-m", "compiler.cli", "compile", str(tmp_path / "x"),
                        "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and "does not exist" in r.stderr


def test_inspect_with_target_predicts_per_kernel(tmp_path, capsys):
    model = _model(tmp_path / "m.onnx")
    assert main(["inspect", model, "--shape", "x=4x8", "--target", "raspberry-pi-5",
                 "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)["prediction"]
    pick = search(import_onnx(onnx.load(model)), get_profile("raspberry-pi-5"),
                  bindings={"batch": 4}, precisions=["fp32"]).choice  # what compile picks
    assert pred["target"] == "raspberry-pi-5" and pred["backend"] == pick.config["backend"]
    assert pred["latency_ms"] == pick.prediction.summary()["latency_ms"]
    assert pred["latency_ms"] > 0 and pred["energy_mj"] > 0
    assert pred["nodes"] and sum(k["ms"] for k in pred["nodes"]) <= pred["latency_ms"] * 1.01
    assert main(["inspect", model, "--target", "no-such-board"]) == 2
    # a backend that does not serve the target, or an unknown precision: exit 2, not a number
    assert main(["inspect", model, "--target", "host", "--backend", "tensorrt"]) == 2
    assert main(["inspect", model, "--target", "host", "--precision", "int3"]) == 2
    assert "does not serve target" in capsys.readouterr().err
    # a precision is predicted on the graph as the precision pass lowers it
    assert main(["inspect", model, "--shape", "x=4x8", "--target", "host", "--backend",
                 "onnxruntime", "--precision", "int8", "--json"]) == 0
    pred = json.loads(capsys.readouterr().out)["prediction"]
    assert {"int8"} <= {k["precision"] for k in pred["nodes"]}
    assert not any("simulated" in a for a in pred["assumptions"])
