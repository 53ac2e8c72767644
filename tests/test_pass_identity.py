"""identity_elimination: no-op nodes go, the interface and the numbers (bit for bit) stay."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto as T
from onnx import helper as h

import compiler
from tests.helpers import (
    assert_same_outputs,
    const,
    make_model,
    op_types,
    run_pass,
    tensor_info,
)


def _graph(model, infer: bool = True):
    g = compiler.import_onnx(model)
    if infer:
        run_pass(g, "shape_inference")
    return g


def _io_names(g):
    return [v.name for v in g.inputs], [v.name for v in g.outputs]


def _check(model, expected_ops, *, removed: int, infer: bool = True, **config):
    """Run the pass; check op types, I/O names, the result and the numbers, bit for bit."""
    g = _graph(model, infer)
    io = _io_names(g)
    r = run_pass(g, "identity_elimination", **config)
    assert op_types(g) == expected_ops
    assert _io_names(g) == io
    assert r.modified is (removed > 0)
    assert r.stats["nodes_removed"] == removed
    assert_same_outputs(model, g, bitwise=True)
    return g


X = tensor_info("x", T.FLOAT, [2, 3])
Y = tensor_info("y", T.FLOAT, [2, 3])


def test_identity_in_the_middle_is_removed():
    m = make_model([h.make_node("Relu", ["x"], ["a"]),
                    h.make_node("Identity", ["a"], ["b"]),
                    h.make_node("Neg", ["b"], ["y"])], [X], [Y])
    g = _check(m, ["Relu", "Neg"], removed=1)
    relu, neg = g.nodes
    assert neg.inputs[0] is relu.outputs[0]


def test_identity_producing_a_graph_output_keeps_the_output_name():
    m = make_model([h.make_node("Relu", ["x"], ["a"]),
                    h.make_node("Identity", ["a"], ["y"])], [X], [Y])
    g = _check(m, ["Relu"], removed=1)
    assert g.outputs[0].name == "y" and g.outputs[0].producer is g.nodes[0]


def test_identity_chain_on_a_graph_output_collapses():
    m = make_model([h.make_node("Relu", ["x"], ["a"]),
                    h.make_node("Identity", ["a"], ["b"]),
                    h.make_node("Identity", ["b"], ["y"])], [X], [Y])
    g = _check(m, ["Relu"], removed=2)
    assert g.outputs[0].name == "y"


def test_identity_from_graph_input_to_graph_output_stays():
    m = make_model([h.make_node("Identity", ["x"], ["y"])], [X], [Y])
    _check(m, ["Identity"], removed=0)


def test_identity_between_two_graph_outputs_stays():
    a = tensor_info("a", T.FLOAT, [2, 3])
    m = make_model([h.make_node("Relu", ["x"], ["a"]),
                    h.make_node("Identity", ["a"], ["y"])], [X], [a, Y])
    g = _check(m, ["Relu", "Identity"], removed=0)
    assert [v.name for v in g.outputs] == ["a", "y"]


def test_identity_of_an_initializer_to_a_graph_output_stays():
    m = make_model([h.make_node("Identity", ["w"], ["y"]),
                    h.make_node("Relu", ["x"], ["z"])],
                   [X], [Y, tensor_info("z", T.FLOAT, [2, 3])],
                   [const(np.ones((2, 3)), "w", np.float32)])
    _check(m, ["Identity", "Relu"], removed=0)


def test_dropout_with_unused_mask_is_removed():
    m = make_model([h.make_node("Dropout", ["x"], ["d", "mask"]),
                    h.make_node("Relu", ["d"], ["y"])], [X], [Y])
    _check(m, ["Relu"], removed=1)


def test_dropout_with_used_mask_stays():
    mask = tensor_info("mask", T.BOOL, [2, 3])
    m = make_model([h.make_node("Dropout", ["x"], ["d", "mask"]),
                    h.make_node("Relu", ["d"], ["y"])], [X], [Y, mask])
    _check(m, ["Dropout", "Relu"], removed=0)


def test_dropout_in_training_mode_or_with_runtime_mode_stays():
    ratio = const(np.float32(0.5), "ratio")
    train = const(np.bool_(True), "train")
    m = make_model([h.make_node("Dropout", ["x", "ratio", "train"], ["y"])], [X], [Y],
                   [ratio, train])
    g = _graph(m)
    assert not run_pass(g, "identity_elimination").modified
    assert op_types(g) == ["Dropout"]
    mode = tensor_info("mode", T.BOOL, [])
    m = make_model([h.make_node("Dropout", ["x", "ratio", "mode"], ["d"]),
                    h.make_node("Relu", ["d"], ["y"])], [X, mode], [Y], [ratio])
    _check(m, ["Dropout", "Relu"], removed=0)


def test_dropout_with_constant_false_training_mode_is_removed():
    m = make_model([h.make_node("Dropout", ["x", "ratio", "train"], ["d"]),
                    h.make_node("Relu", ["d"], ["y"])], [X], [Y],
                   [const(np.float32(0.5), "ratio"), const(np.bool_(False), "train")])
    _check(m, ["Relu"], removed=1)


def test_cast_to_the_same_type_is_removed_and_a_real_cast_stays():
    m = make_model([h.make_node("Cast", ["x"], ["c"], to=T.FLOAT),
                    h.make_node("Relu", ["c"], ["y"])], [X], [Y])
    _check(m, ["Relu"], removed=1)
    m = make_model([h.make_node("Cast", ["x"], ["c"], to=T.FLOAT16),
                    h.make_node("Cast", ["c"], ["y"], to=T.FLOAT)], [X], [Y])
    g = _graph(m)
    assert not run_pass(g, "identity_elimination").modified
    assert op_types(g) == ["Cast", "Cast"]


def test_reshape_noop_removed_only_when_shapes_are_known():
    shape = const(np.array([2, 3], np.int64), "shape")
    nodes = [h.make_node("Reshape", ["x", "shape"], ["r"]), h.make_node("Relu", ["r"], ["y"])]
    m = make_model(nodes, [X], [Y], [shape])
    _check(m, ["Relu"], removed=1)
    # Without shape inference the output shape is unknown: the Reshape must stay.
    _check(m, ["Reshape", "Relu"], removed=0, infer=False)
    # A symbolic batch dim is not a static shape: stays.
    xs = tensor_info("x", T.FLOAT, ["n", 3])
    m = make_model(nodes, [xs], [tensor_info("y", T.FLOAT, ["n", 3])],
                   [const(np.array([-1, 3], np.int64), "shape")])
    _check(m, ["Reshape", "Relu"], removed=0)


def test_reshape_that_changes_the_shape_stays():
    m = make_model([h.make_node("Reshape", ["x", "shape"], ["r"]),
                    h.make_node("Relu", ["r"], ["y"])], [X], [tensor_info("y", T.FLOAT, [3, 2])],
                   [const(np.array([3, 2], np.int64), "shape")])
    _check(m, ["Reshape", "Relu"], removed=0)


def test_identity_transpose_removed_real_transpose_stays():
    m = make_model([h.make_node("Transpose", ["x"], ["t"], perm=[0, 1]),
                    h.make_node("Transpose", ["t"], ["y"], perm=[1, 0])],
                   [X], [tensor_info("y", T.FLOAT, [3, 2])])
    _check(m, ["Transpose"], removed=1)


def _binary(op: str, value, *, dtype=np.float32, shape=()):
    c = const(np.full(shape, value, dtype), "c")
    return make_model([h.make_node(op, ["x", "c"], ["a"]), h.make_node("Relu", ["a"], ["y"])],
                      [X], [Y], [c])


def test_mul_by_one_and_div_by_one_are_removed():
    _check(_binary("Mul", 1.0), ["Relu"], removed=1)
    _check(_binary("Div", 1.0, shape=(3,)), ["Relu"], removed=1)


def test_mul_by_one_that_broadcasts_to_a_bigger_shape_stays():
    m = _binary("Mul", 1.0, shape=(4, 2, 3))
    m.graph.output[0].CopyFrom(tensor_info("y", T.FLOAT, [4, 2, 3]))
    _check(m, ["Mul", "Relu"], removed=0)


def test_mul_by_an_initializer_that_is_also_an_input_stays():
    m = _binary("Mul", 1.0)
    m.graph.input.append(tensor_info("c", T.FLOAT, []))
    _check(m, ["Mul", "Relu"], removed=0)


def test_add_positive_zero_stays_because_of_signed_zero():
    # -0.0 + 0.0 == +0.0: removing the Add would change the sign of zero inputs.
    m = _binary("Add", 0.0)
    _check(m, ["Add", "Relu"], removed=0)
    m = make_model([h.make_node("Add", ["x", "c"], ["y"])], [X], [Y],
                   [const(np.float32(0.0), "c")])
    _check(m, ["Add"], removed=0)


def test_add_negative_zero_is_removed():
    m = make_model([h.make_node("Add", ["x", "c"], ["a"]), h.make_node("Neg", ["a"], ["y"])],
                   [X], [Y], [const(np.float32(-0.0), "c")])
    _check(m, ["Neg"], removed=1)


def test_sub_positive_zero_is_removed():
    m = make_model([h.make_node("Sub", ["x", "c"], ["a"]), h.make_node("Neg", ["a"], ["y"])],
                   [X], [Y], [const(np.float32(0.0), "c")])
    _check(m, ["Neg"], removed=1)


def test_sub_negative_zero_stays():
    m = make_model([h.make_node("Sub", ["x", "c"], ["a"]), h.make_node("Neg", ["a"], ["y"])],
                   [X], [Y], [const(np.float32(-0.0), "c")])
    _check(m, ["Sub", "Neg"], removed=0)


def test_arithmetic_false_keeps_mul_by_one():
    _check(_binary("Mul", 1.0), ["Mul", "Relu"], removed=0, arithmetic=False)


def test_full_slice_is_removed():
    m = make_model([h.make_node("Slice", ["x", "st", "en"], ["s"]),
                    h.make_node("Relu", ["s"], ["y"])], [X], [Y],
                   [const([0], "st", np.int64), const([2**62], "en", np.int64)])
    _check(m, ["Relu"], removed=1)


def test_reversing_slice_stays():
    m = make_model([h.make_node("Slice", ["x", "st", "en", "ax", "sp"], ["s"]),
                    h.make_node("Relu", ["s"], ["y"])], [X], [Y],
                   [const([-1], "st", np.int64), const([-(2**62)], "en", np.int64),
                    const([0], "ax", np.int64), const([-1], "sp", np.int64)])
    _check(m, ["Slice", "Relu"], removed=0)


def test_identity_inside_an_if_branch_is_removed():
    cond = tensor_info("cond", T.BOOL, [])
    then_g = h.make_graph([h.make_node("Relu", ["x"], ["t0"]),
                           h.make_node("Identity", ["t0"], ["t1"])], "then", [],
                          [tensor_info("t1", T.FLOAT, [2, 3])])
    else_g = h.make_graph([h.make_node("Neg", ["x"], ["e0"])], "else", [],
                          [tensor_info("e0", T.FLOAT, [2, 3])])
    m = make_model([h.make_node("If", ["cond"], ["y"], then_branch=then_g,
                                else_branch=else_g)], [X, cond], [Y])
    g = _check(m, ["If"], removed=1)
    branch = g.nodes[0].attrs["then_branch"].value
    assert op_types(branch) == ["Relu"] and branch.outputs[0].name == "t1"


def test_second_run_changes_nothing():
    m = make_model([h.make_node("Relu", ["x"], ["a"]),
                    h.make_node("Identity", ["a"], ["b"]),
                    h.make_node("Mul", ["b", "one"], ["y"])], [X], [Y],
                   [const(np.float32(1.0), "one")])
    g = _check(m, ["Relu"], removed=2)
    again = run_pass(g, "identity_elimination")
    assert not again.modified and again.stats["nodes_removed"] == 0


def test_identity_read_from_inside_a_subgraph_is_bypassed_there_too():
    cond = tensor_info("cond", T.BOOL, [])
    then_g = h.make_graph([h.make_node("Neg", ["b"], ["t0"])], "then", [],
                          [tensor_info("t0", T.FLOAT, [2, 3])])
    else_g = h.make_graph([h.make_node("Exp", ["b"], ["e0"])], "else", [],
                          [tensor_info("e0", T.FLOAT, [2, 3])])
    m = make_model([h.make_node("Relu", ["x"], ["a"]),
                    h.make_node("Identity", ["a"], ["b"]),
                    h.make_node("If", ["cond"], ["y"], then_branch=then_g,
                                else_branch=else_g)], [X, cond], [Y])
    g = _check(m, ["Relu", "If"], removed=1)
    relu, if_node = g.nodes
    for branch in if_node.subgraphs():
        assert branch.nodes[0].inputs[0] is relu.outputs[0]
