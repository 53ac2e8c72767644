"""Precision through compile() and the CLI: calibration in, Q/DQ in the graph, map in the
manifest and in `edgec inspect`."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

import compiler
from compiler import zoo
from compiler.cli import main
from compiler.errors import ConstraintError


def _calib(n: int = 8):
    return [zoo.example_inputs("cnn", seed=s) for s in range(n)]


@pytest.fixture
def fixed_host(monkeypatch):
    """compile(target="host") on a fixed VNNI CPU stand-in: which layers pay in INT8 must not
    depend on this machine's measured (noisy) peaks."""
    import targets.devices
    from tests.stand_ins import vnni_host

    stand_in, real = vnni_host(), targets.devices.get_profile
    monkeypatch.setattr(targets.devices, "get_profile",
                        lambda name: stand_in if name == "host" else real(name))
    return stand_in


def test_mixed_precision_compile_records_the_map(tmp_path, fixed_host):
    art = compiler.compile(zoo.get("cnn"), precision="mixed", calibration=_calib(),
                           constraints={"max_accuracy_drop": 0.0}, out_dir=tmp_path / "b")
    rep = art.manifest["precision"]
    assert rep["precision"] == "mixed" and "top-1" in rep["metric"]
    assert set(rep["layers"]) and all("reason" in v for v in rep["layers"].values())
    assert art.verification["passed"] is True
    model = onnx.load(tmp_path / "b" / "model.onnx")
    producer = {o: n for n in model.graph.node for o in n.output}
    int8_convs = [k for k, v in rep["layers"].items()
                  if v["precision"] == "int8" and v["op"] == "Conv"]
    assert int8_convs, rep["totals"]
    # each int8 Conv is still a plain Conv whose weight comes from DequantizeLinear (the Q/DQ
    # pattern ORT/OpenVINO turn into integer kernels), not hidden inside a FusedConv
    convs_on_dq = [n for n in model.graph.node if n.op_type == "Conv"
                   and producer.get(n.input[1]) is not None
                   and producer[n.input[1]].op_type == "DequantizeLinear"]
    assert len(convs_on_dq) == len(int8_convs)


def test_int8_needs_calibration():
    with pytest.raises(ConstraintError, match="calibration"):
        compiler.compile(zoo.get("cnn"), precision="int8")


def test_cli_calib_folder_and_inspect(tmp_path, capsys):
    calib = tmp_path / "calib"
    calib.mkdir()
    for i, feeds in enumerate(_calib(4)):
        np.savez(calib / f"s{i}.npz", **feeds)
    out = tmp_path / "bundle"
    code = main(["compile", str(zoo.get("cnn")), "--out", str(out), "--precision", "int8",
                 "--calib", str(calib), "--json"])
    doc = json.loads(capsys.readouterr().out)
    assert code == 0 and doc["precision"]["totals"]["int8"] > 0
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "precision map" in text and "int8" in text
