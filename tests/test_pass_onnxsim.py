"""onnxsim pass: ONNX Simplifier folds and simplifies in place; I/O names, model info and
numbers stay."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import compiler
from compiler.errors import MissingDependencyError
from tests.helpers import (
    assert_same_outputs,
    const,
    make_model,
    op_types,
    run_pass,
    tensor_info,
)


def _foldable(batch: int | str = 2):
    x = tensor_info("x", T.FLOAT, [batch, 3])
    y = tensor_info("y", T.FLOAT, [batch, 3])
    return make_model([h.make_node("Constant", [], ["c1"],
                                   value=const(np.ones(3, np.float32), "c1t")),
                       h.make_node("Add", ["c1", "c2"], ["c3"]),
                       h.make_node("Identity", ["x"], ["xi"]),
                       h.make_node("Mul", ["xi", "c3"], ["m"]),
                       h.make_node("Shape", ["m"], ["s"]),
                       h.make_node("Reshape", ["m", "s"], ["r"]),
                       h.make_node("Identity", ["r"], ["y"])],
                      [x], [y], [const(np.full(3, 2.0), "c2", np.float32)])


@pytest.mark.parametrize("batch", [2, "batch"])
def test_simplifies_a_foldable_graph_and_keeps_io_names(batch):
    m = _foldable(batch)
    g = compiler.import_onnx(m)
    r = run_pass(g, "onnxsim")
    assert r.modified and r.stats == {"nodes_before": 7, "nodes_after": len(g)}
    # Only the Mul by the folded constant (x * 3) computes anything now.
    assert [t for t in op_types(g) if t != "Constant"] == ["Mul"]
    assert [v.name for v in g.inputs] == ["x"] and [v.name for v in g.outputs] == ["y"]
    assert g.outputs[0].producer is not None and g.outputs[0].producer.op_type == "Mul"
    assert_same_outputs(m, g, bitwise=True, dims={"batch": 4})


def test_graph_is_updated_in_place_and_model_info_is_kept():
    m = _foldable()
    m.producer_name = "unit-test"
    m.metadata_props.add(key="origin", value="hand-built")
    g = compiler.import_onnx(m)
    run_pass(g, "onnxsim")
    assert g.model.producer_name == "unit-test"
    assert g.model.metadata_props == {"origin": "hand-built"}
    assert g.opset_imports == {"": 17}
    assert all(n.graph is g for n in g) and all(v.graph is g for v in g.inputs)
    assert all(o.graph is g for n in g for o in n.outputs)
    out = compiler.export_onnx(g)
    assert out.producer_name == "unit-test"
    assert {p.key: p.value for p in out.metadata_props} == {"origin": "hand-built"}


def test_already_simple_graph_reports_not_modified():
    m = make_model([h.make_node("Relu", ["x"], ["y"])],
                   [tensor_info("x", T.FLOAT, [2, 3])], [tensor_info("y", T.FLOAT, [2, 3])])
    g = compiler.import_onnx(m)
    r = run_pass(g, "onnxsim")
    assert op_types(g) == ["Relu"]
    assert not r.modified


def test_missing_onnxsim_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxsim", None)  # import onnxsim -> ImportError
    g = compiler.import_onnx(_foldable())
    with pytest.raises(MissingDependencyError, match="onnxsim"):
        run_pass(g, "onnxsim")
    assert len(g) == 7  # untouched
