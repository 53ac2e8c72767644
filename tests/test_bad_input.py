"""Bad input: every case raises a CompileError subclass, the CLI exits 2 with one line, and
no output folder is left behind."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import compiler
from compiler.cli import main
from compiler.errors import (
    CompileError,
    ExternalDataError,
    InvalidModelError,
    UnknownTargetError,
)


def _mlp(opset: int = 17) -> onnx.ModelProto:
    w = onnx.numpy_helper.from_array(np.ones((4, 4), np.float32), "W")
    g = h.make_graph([h.make_node("MatMul", ["x", "W"], ["y"], name="mm")], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [1, 4])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 4])], [w])
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)])


def _write(path, model: onnx.ModelProto) -> str:
    path.write_bytes(model.SerializeToString())
    return str(path)


def _external(tmp_path, location: str) -> str:
    m = _mlp()
    t = m.graph.initializer[0]
    t.ClearField("raw_data")
    t.ClearField("float_data")
    t.data_location = T.EXTERNAL
    t.external_data.add(key="location", value=location)
    return _write(tmp_path / "ext.onnx", m)


def case_truncated(tmp_path):
    data = _mlp().SerializeToString()
    (tmp_path / "m.onnx").write_bytes(data[: len(data) // 2])
    return str(tmp_path / "m.onnx"), InvalidModelError, "truncated"


def case_not_onnx(tmp_path):
    (tmp_path / "m.onnx").write_text("this is a README, not a model\n" * 20)
    return str(tmp_path / "m.onnx"), InvalidModelError, "not"


def case_empty(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"")
    return str(tmp_path / "m.onnx"), InvalidModelError, "empty"


def case_missing(tmp_path):
    return str(tmp_path / "nope.onnx"), InvalidModelError, "does not exist"


def case_cycle(tmp_path):
    g = h.make_graph([h.make_node("Add", ["x", "b"], ["a"], name="n1"),
                      h.make_node("Relu", ["a"], ["b"], name="n2")], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [1])],
                     [h.make_tensor_value_info("b", T.FLOAT, [1])])
    return _write(tmp_path / "m.onnx", h.make_model(g, opset_imports=[h.make_opsetid("", 17)])), \
        InvalidModelError, "cycle"


def case_unproduced_input(tmp_path):
    g = h.make_graph([h.make_node("Add", ["x", "ghost"], ["y"], name="add")], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [1])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1])])
    return _write(tmp_path / "m.onnx", h.make_model(g, opset_imports=[h.make_opsetid("", 17)])), \
        InvalidModelError, "ghost"


def case_unknown_op(tmp_path):
    g = h.make_graph([h.make_node("FrobnicateV9", ["x"], ["y"], name="frob")], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [1])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1])])
    return _write(tmp_path / "m.onnx", h.make_model(g, opset_imports=[h.make_opsetid("", 17)])), \
        InvalidModelError, "FrobnicateV9"


def case_unknown_domain(tmp_path):
    g = h.make_graph([h.make_node("Relu", ["x"], ["y"], name="r", domain="com.acme")], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [1])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1])])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("com.acme", 1)])
    return _write(tmp_path / "m.onnx", m), InvalidModelError, "com.acme"


def case_absurd_dim(tmp_path):
    g = h.make_graph([h.make_node("Relu", ["x"], ["y"], name="r")], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [1, 10**13])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 10**13])])
    return _write(tmp_path / "m.onnx", h.make_model(g, opset_imports=[h.make_opsetid("", 17)])), \
        InvalidModelError, "absurd"


def case_external_absolute(tmp_path):
    secret = tmp_path.parent / "secret.bin"
    secret.write_bytes(b"\0" * 64)
    return _external(tmp_path, str(secret)), ExternalDataError, "absolute"


def case_external_escape(tmp_path):
    (tmp_path.parent / "outside.bin").write_bytes(b"\0" * 64)
    return _external(tmp_path, "../outside.bin"), ExternalDataError, "outside"


CASES = [case_truncated, case_not_onnx, case_empty, case_missing, case_cycle,
         case_unproduced_input, case_unknown_op, case_unknown_domain, case_absurd_dim,
         case_external_absolute, case_external_escape]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[5:])
def test_python_api_raises_compile_error(tmp_path, case):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    path, exc, words = case(model_dir)
    out = tmp_path / "out"
    with pytest.raises(exc) as info:
        compiler.compile(path, target="host", out_dir=out)
    assert words.lower() in str(info.value).lower()
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if "edgec-tmp" in p.name]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.__name__[5:])
def test_cli_exits_2_with_one_line(tmp_path, case, capsys):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    path, _, _ = case(model_dir)
    out = tmp_path / "out"
    code = main(["compile", path, "--target", "host", "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("edgec: error:")
    assert "Traceback" not in err
    assert not out.exists()


def test_external_data_is_never_read_when_refused(tmp_path, monkeypatch):
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    path = _external(model_dir, "../outside.bin")
    (tmp_path / "outside.bin").write_bytes(b"\0" * 64)
    opened = []
    real_open = open

    def spy(file, *a, **k):
        opened.append(os.fspath(file))
        return real_open(file, *a, **k)

    monkeypatch.setattr("builtins.open", spy)
    with pytest.raises(ExternalDataError):
        compiler.import_onnx(path)
    assert not any(p.endswith("outside.bin") for p in opened)


def test_unknown_target(tmp_path, capsys):
    path = _write(tmp_path / "m.onnx", _mlp())
    with pytest.raises(UnknownTargetError) as info:
        compiler.compile(path, target="jetson-orinn", out_dir=tmp_path / "out")
    assert "jetson-orin" in str(info.value)
    assert main(["compile", path, "--target", "no-such-device", "--out",
                 str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists()


def test_external_data_given_as_bytes_needs_a_folder(tmp_path):
    m = onnx.load(_external(tmp_path, "w.bin"), load_external_data=False)
    with pytest.raises(ExternalDataError, match="base_dir"):
        compiler.import_onnx(m)


def test_opset_out_of_range(tmp_path):
    with pytest.raises(InvalidModelError, match="opset"):
        compiler.import_onnx(_mlp(opset=5))


def test_unknown_precision_and_backend(tmp_path):
    path = _write(tmp_path / "m.onnx", _mlp())
    with pytest.raises(CompileError, match="precision"):
        compiler.compile(path, precision="int3")
    with pytest.raises(CompileError, match="backend"):
        compiler.compile(path, backend="tensorrt")  # not a host backend
    assert main(["compile", path, "--out", str(tmp_path / "o"), "--shape", "x=1xq"]) == 2


def test_existing_non_bundle_folder_is_not_overwritten(tmp_path):
    path = _write(tmp_path / "m.onnx", _mlp())
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    with pytest.raises(CompileError, match="not an edgec bundle"):
        compiler.compile(path, out_dir=out)
    assert (out / "precious.txt").read_text() == "keep me"
