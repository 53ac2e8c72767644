"""constant_folding: constant subexpressions become initializers; Q/DQ, runtime-overridable
initializers, nondeterministic ops and model-growing folds are left alone."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto as T
from onnx import helper as h

import compiler
import passes.fold
from tests.helpers import (
    assert_same_outputs,
    const,
    make_model,
    op_types,
    run_ort,
    run_pass,
    tensor_info,
)

X = tensor_info("x", T.FLOAT, [2, 3])
Y = tensor_info("y", T.FLOAT, [2, 3])


def _fold(model, *, infer: bool = False, **config):
    g = compiler.import_onnx(model)
    if infer:
        run_pass(g, "shape_inference")
    io = ([v.name for v in g.inputs], [v.name for v in g.outputs])
    r = run_pass(g, "constant_folding", **config)
    assert ([v.name for v in g.inputs], [v.name for v in g.outputs]) == io
    assert_same_outputs(model, g, bitwise=True)
    return g, r


def _const_node(out: str, array) -> object:
    return h.make_node("Constant", [], [out], value=const(array, out + "_t"))


def test_constant_add_chain_folds_into_one_initializer():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    m = make_model([_const_node("c1", a), _const_node("c2", np.float32(0.5)),
                    h.make_node("Add", ["c1", "c2"], ["s"]),
                    h.make_node("Mul", ["s", "s"], ["s2"]),
                    h.make_node("Add", ["x", "s2"], ["y"])], [X], [Y])
    g, r = _fold(m)
    assert op_types(g) == ["Add"]
    assert r.modified and r.stats == {"nodes_folded": 4}
    add = g.nodes[0]
    assert add.inputs[0] is g.inputs[0]
    folded = add.inputs[1]
    assert folded.is_const and folded.name in g.initializers
    np.testing.assert_array_equal(folded.const.numpy(), (a + 0.5) * (a + 0.5))
    again = run_pass(g, "constant_folding")
    assert not again.modified and again.stats == {"nodes_folded": 0}


def test_initializer_only_expression_folds_and_keeps_dtype():
    m = make_model([h.make_node("Cast", ["w"], ["wh"], to=T.FLOAT16),
                    h.make_node("Cast", ["x"], ["xh"], to=T.FLOAT16),
                    h.make_node("Mul", ["xh", "wh"], ["y"])],
                   [X], [tensor_info("y", T.FLOAT16, [2, 3])],
                   [const(np.linspace(-1, 1, 3), "w", np.float32)])
    g, r = _fold(m, infer=True)
    assert op_types(g) == ["Cast", "Mul"] and r.stats == {"nodes_folded": 1}
    w = g.nodes[1].inputs[1]
    assert w.is_const and w.const.numpy().dtype == np.float16


def test_shape_of_a_static_input_is_folded():
    m = make_model([h.make_node("Shape", ["x"], ["s"]),
                    h.make_node("Expand", ["c", "s"], ["e"]),
                    h.make_node("Add", ["x", "e"], ["y"])], [X], [Y],
                   [const(np.float32(2.0), "c")])
    g, r = _fold(m)
    assert op_types(g) == ["Add"] and r.stats == {"nodes_folded": 2}
    np.testing.assert_array_equal(g.nodes[0].inputs[1].const.numpy(), np.full((2, 3), 2.0))


def test_shape_with_start_end_is_sliced():
    m = make_model([h.make_node("Shape", ["x"], ["s"], start=-1),
                    h.make_node("Reshape", ["x", "s"], ["y"])],
                   [tensor_info("x", T.FLOAT, [1, 6])], [tensor_info("y", T.FLOAT, [6])])
    g, r = _fold(m)
    assert op_types(g) == ["Reshape"] and r.stats == {"nodes_folded": 1}
    assert g.nodes[0].inputs[1].const.numpy().tolist() == [6]


def test_shape_of_a_dynamic_input_is_not_folded():
    xs = tensor_info("x", T.FLOAT, ["n", 3])
    m = make_model([h.make_node("Shape", ["x"], ["s"]),
                    h.make_node("Expand", ["c", "s"], ["e"]),
                    h.make_node("Add", ["x", "e"], ["y"])], [xs],
                   [tensor_info("y", T.FLOAT, ["n", 3])], [const(np.float32(2.0), "c")])
    g, r = _fold(m)
    assert op_types(g) == ["Shape", "Expand", "Add"] and not r.modified


def test_quantize_dequantize_are_never_folded():
    w = np.linspace(-1, 1, 9, dtype=np.float32).reshape(3, 3)
    m = make_model([h.make_node("QuantizeLinear", ["w", "scale", "zp"], ["wq"]),
                    h.make_node("DequantizeLinear", ["wq", "scale", "zp"], ["wd"]),
                    h.make_node("MatMul", ["x", "wd"], ["y"])], [X], [Y],
                   [const(w, "w"), const(np.float32(0.01), "scale"),
                    const(np.int8(0), "zp")])
    g, r = _fold(m)
    assert op_types(g) == ["QuantizeLinear", "DequantizeLinear", "MatMul"]
    assert not r.modified and r.stats == {"nodes_folded": 0}


def test_initializer_that_is_also_a_graph_input_is_not_folded():
    m = make_model([h.make_node("Mul", ["c", "k"], ["ck"]),
                    h.make_node("Add", ["x", "ck"], ["y"])],
                   [X, tensor_info("c", T.FLOAT, [3])], [Y],
                   [const(np.ones(3), "c", np.float32), const(np.float32(3.0), "k")])
    g, r = _fold(m)
    assert op_types(g) == ["Mul", "Add"] and not r.modified
    # The default still gives the same numbers, and an override still takes effect.
    feeds = {"x": np.zeros((2, 3), np.float32), "c": np.full(3, 2.0, np.float32)}
    assert run_ort(compiler.export_onnx(g), feeds)["y"].tolist() == [[6.0] * 3] * 2


def test_size_limit_refuses_an_expand_that_would_blow_up():
    m = make_model([h.make_node("Expand", ["c", "shape"], ["e"]),
                    h.make_node("ReduceSum", ["e"], ["r"], keepdims=0),
                    h.make_node("Add", ["x", "r"], ["y"])], [X], [Y],
                   [const(np.float32(1.0), "c"), const([64, 64], "shape", np.int64)])
    g, r = _fold(m, max_elements=100)
    assert op_types(g) == ["Expand", "ReduceSum", "Add"] and not r.modified
    # Under the default limit the same Expand folds (and so does everything after it).
    g, r = _fold(m)
    assert op_types(g) == ["Add"] and r.stats == {"nodes_folded": 2}


def test_size_limit_is_checked_before_evaluating(monkeypatch):
    m = make_model([h.make_node("Expand", ["c", "shape"], ["e"]),
                    h.make_node("ReduceSum", ["e"], ["r"], keepdims=0),
                    h.make_node("Add", ["x", "r"], ["y"])], [X], [Y],
                   [const(np.float32(1.0), "c"), const([64, 64], "shape", np.int64)])
    g = compiler.import_onnx(m)
    run_pass(g, "shape_inference")
    assert g.nodes[0].outputs[0].shape == (64, 64)
    evaluated = []
    real = passes.fold.fold_node

    def spy(node):
        evaluated.append(node.op_type)
        return real(node)

    monkeypatch.setattr(passes.fold, "fold_node", spy)
    run_pass(g, "constant_folding", max_elements=100)
    assert "Expand" not in evaluated


def test_nondeterministic_ops_are_not_folded():
    m = make_model([h.make_node("RandomNormal", [], ["n"], shape=[2, 3], dtype=T.FLOAT),
                    h.make_node("Mul", ["n", "zero"], ["z"]),
                    h.make_node("Add", ["x", "z"], ["y"])], [X], [Y],
                   [const(np.float32(0.0), "zero")])
    g = compiler.import_onnx(m)
    r = run_pass(g, "constant_folding")
    assert op_types(g) == ["RandomNormal", "Mul", "Add"] and not r.modified


def test_foldable_node_producing_a_graph_output_stays():
    m = make_model([h.make_node("Add", ["a", "b"], ["y"]), h.make_node("Relu", ["x"], ["z"])],
                   [X], [Y, tensor_info("z", T.FLOAT, [2, 3])],
                   [const(np.ones((2, 3)), "a", np.float32), const(np.float32(1.0), "b")])
    g, r = _fold(m)
    assert op_types(g) == ["Add", "Relu"] and not r.modified
    assert g.outputs[0].producer is g.nodes[0]


def test_partially_folded_multi_output_node_reports_modified():
    m = make_model([h.make_node("Split", ["w", "sp"], ["s0", "s1"], axis=0),
                    h.make_node("Add", ["x", "s1"], ["y"])],
                   [X], [Y, tensor_info("s0", T.FLOAT, [1, 3])],
                   [const(np.arange(9).reshape(3, 3), "w", np.float32),
                    const([1, 2], "sp", np.int64)])
    m.graph.output[0].CopyFrom(tensor_info("y", T.FLOAT, [2, 3]))
    g, r = _fold(m)
    add = [n for n in g if n.op_type == "Add"][0]
    assert add.inputs[1].is_const  # the graph did change...
    assert r.modified  # ...so the pass must say so


def test_folding_inside_an_if_branch():
    then_g = h.make_graph([_const_node("k", np.float32(2.0)),
                           h.make_node("Mul", ["k", "k"], ["k2"]),
                           h.make_node("Mul", ["x", "k2"], ["t0"])], "then", [],
                          [tensor_info("t0", T.FLOAT, [2, 3])])
    else_g = h.make_graph([h.make_node("Neg", ["x"], ["e0"])], "else", [],
                          [tensor_info("e0", T.FLOAT, [2, 3])])
    m = make_model([h.make_node("If", ["cond"], ["y"], then_branch=then_g,
                                else_branch=else_g)], [X, tensor_info("cond", T.BOOL, [])],
                   [Y])
    g, r = _fold(m)
    branch = g.nodes[0].attrs["then_branch"].value
    assert op_types(g) == ["If"] and op_types(branch) == ["Mul"]
    assert r.stats == {"nodes_folded": 2}
    assert branch.nodes[0].inputs[1].const.numpy() == np.float32(4.0)


def test_if_node_itself_is_not_folded():
    then_g = h.make_graph([_const_node("t0", np.float32(1.0))], "then", [],
                          [tensor_info("t0", T.FLOAT, [])])
    else_g = h.make_graph([_const_node("e0", np.float32(2.0))], "else", [],
                          [tensor_info("e0", T.FLOAT, [])])
    m = make_model([h.make_node("If", ["cond"], ["k"], then_branch=then_g,
                                else_branch=else_g),
                    h.make_node("Mul", ["x", "k"], ["y"])], [X], [Y],
                   [const(np.bool_(True), "cond")])
    g, r = _fold(m)
    assert op_types(g) == ["If", "Mul"]
    assert not r.modified  # branch Constants feed subgraph outputs: kept


def test_folded_constant_names_do_not_collide_with_existing_ones():
    # Names like 's__0' are what edgec itself generates, so re-optimising its output hits this.
    m = make_model([h.make_node("Add", ["a", "b"], ["s"]),
                    h.make_node("Mul", ["x", "s"], ["m"]),
                    h.make_node("Add", ["m", "s__0"], ["y"])], [X], [Y],
                   [const(np.float32(1.0), "a"), const(np.float32(2.0), "b"),
                    const(np.full(3, 10.0), "s__0", np.float32)])
    g, r = _fold(m)
    assert op_types(g) == ["Mul", "Add"] and r.stats == {"nodes_folded": 1}
    assert g.initializers["s__0"].const.numpy().tolist() == [10.0] * 3


def test_constant_it_cannot_read_is_left_alone():
    """A Constant holding strings (constant_value: None) feeding a node is not folded, and
    does not crash the pass."""
    s = tensor_info("s", T.STRING, [2])
    m = make_model([h.make_node("Constant", [], ["c"], value_strings=["a", "b"]),
                    h.make_node("Identity", ["c"], ["s"])], [], [s])
    g = compiler.import_onnx(m)
    run_pass(g, "constant_folding")
    assert "Identity" in op_types(g)
