"""dce: dead nodes and initializers go (also inside subgraphs); live ones and the I/O stay."""

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

X = tensor_info("x", T.FLOAT, [2, 3])
Y = tensor_info("y", T.FLOAT, [2, 3])
COND = tensor_info("cond", T.BOOL, [])


def _run(model):
    g = compiler.import_onnx(model)
    io = ([v.name for v in g.inputs], [v.name for v in g.outputs])
    r = run_pass(g, "dce")
    assert ([v.name for v in g.inputs], [v.name for v in g.outputs]) == io
    assert_same_outputs(model, g, bitwise=True)
    return g, r


def _branch(nodes, name, out):
    return h.make_graph(nodes, name, [], [tensor_info(out, T.FLOAT, [2, 3])])


def test_dead_branch_is_removed():
    m = make_model([h.make_node("Relu", ["x"], ["a"]),
                    h.make_node("Exp", ["x"], ["dead0"]),
                    h.make_node("Sin", ["dead0"], ["dead1"]),
                    h.make_node("Add", ["dead1", "a"], ["dead2"]),
                    h.make_node("Neg", ["a"], ["y"])], [X], [Y])
    g, r = _run(m)
    assert op_types(g) == ["Relu", "Neg"]
    assert r.modified and r.stats == {"nodes_removed": 3, "initializers_removed": 0}
    assert g.nodes[0].outputs[0].uses == [(g.nodes[1], 0)]


def test_unused_initializer_is_removed_but_used_and_input_initializers_stay():
    m = make_model([h.make_node("Add", ["x", "b"], ["y"])],
                   [X, tensor_info("w_in", T.FLOAT, [2])], [Y],
                   [const(np.ones(3), "b", np.float32), const(np.ones(4), "unused", np.float32),
                    const(np.ones(2), "w_in", np.float32)])
    g, r = _run(m)
    assert sorted(g.initializers) == ["b", "w_in"]
    assert r.modified and r.stats == {"nodes_removed": 0, "initializers_removed": 1}


def test_initializer_of_a_dead_node_goes_with_it():
    m = make_model([h.make_node("Mul", ["x", "w"], ["dead"]), h.make_node("Relu", ["x"], ["y"])],
                   [X], [Y], [const(np.ones(3), "w", np.float32)])
    g, r = _run(m)
    assert op_types(g) == ["Relu"] and not g.initializers
    assert r.stats == {"nodes_removed": 1, "initializers_removed": 1}


def test_multi_output_node_lives_if_any_output_is_used():
    m = make_model([h.make_node("Split", ["x", "sp"], ["s0", "s1"], axis=1),
                    h.make_node("Relu", ["s1"], ["y"])],
                   [X], [tensor_info("y", T.FLOAT, [2, 1])],
                   [const([2, 1], "sp", np.int64)])
    g, r = _run(m)
    assert op_types(g) == ["Split", "Relu"] and not r.modified


def test_nothing_dead_means_not_modified():
    m = make_model([h.make_node("Relu", ["x"], ["y"])], [X], [Y])
    g, r = _run(m)
    assert not r.modified and r.stats == {"nodes_removed": 0, "initializers_removed": 0}


def test_dead_nodes_inside_an_if_branch_are_removed():
    then_g = h.make_graph([h.make_node("Relu", ["x"], ["t0"]),
                           h.make_node("Exp", ["x"], ["t_dead"]),
                           h.make_node("Neg", ["t_dead"], ["t_dead2"])], "then", [],
                          [tensor_info("t0", T.FLOAT, [2, 3])],
                          [const(np.ones(2), "t_unused", np.float32)])
    else_g = _branch([h.make_node("Neg", ["x"], ["e0"])], "else", "e0")
    m = make_model([h.make_node("If", ["cond"], ["y"], then_branch=then_g,
                                else_branch=else_g)], [X, COND], [Y])
    g, r = _run(m)
    branch = g.nodes[0].attrs["then_branch"].value
    assert op_types(g) == ["If"] and op_types(branch) == ["Relu"]
    assert not branch.initializers
    assert r.modified and r.stats["nodes_removed"] == 2


def test_value_captured_by_a_subgraph_keeps_its_producer_alive():
    then_g = _branch([h.make_node("Relu", ["c"], ["t0"])], "then", "t0")
    else_g = _branch([h.make_node("Neg", ["x"], ["e0"])], "else", "e0")
    m = make_model([h.make_node("Sigmoid", ["x"], ["c"]),
                    h.make_node("If", ["cond"], ["y"], then_branch=then_g,
                                else_branch=else_g)], [X, COND], [Y])
    g, r = _run(m)
    assert op_types(g) == ["Sigmoid", "If"] and not r.modified


def test_value_captured_only_by_a_dead_subgraph_node_dies_with_it():
    then_g = _branch([h.make_node("Relu", ["x"], ["t0"]),
                      h.make_node("Exp", ["c"], ["t_dead"])], "then", "t0")
    else_g = _branch([h.make_node("Neg", ["x"], ["e0"])], "else", "e0")
    m = make_model([h.make_node("Sigmoid", ["x"], ["c"]),
                    h.make_node("If", ["cond"], ["y"], then_branch=then_g,
                                else_branch=else_g)], [X, COND], [Y])
    g, r = _run(m)
    assert op_types(g) == ["If"]
    assert op_types(g.nodes[0].attrs["then_branch"].value) == ["Relu"]
    assert r.stats["nodes_removed"] == 2


def test_dead_if_node_releases_the_values_its_branches_captured():
    then_g = _branch([h.make_node("Relu", ["c"], ["t0"])], "then", "t0")
    else_g = _branch([h.make_node("Neg", ["c"], ["e0"])], "else", "e0")
    m = make_model([h.make_node("Sigmoid", ["x"], ["c"]),
                    h.make_node("If", ["cond"], ["dead"], then_branch=then_g,
                                else_branch=else_g),
                    h.make_node("Relu", ["x"], ["y"])], [X, COND], [Y])
    g, r = _run(m)
    assert op_types(g) == ["Relu"]
    assert r.stats["nodes_removed"] == 2  # If and Sigmoid; branch nodes go with the If


def test_dce_runs_to_completion_in_one_call():
    chain = [h.make_node("Exp", ["x" if i == 0 else f"d{i - 1}"], [f"d{i}"]) for i in range(50)]
    m = make_model(chain + [h.make_node("Relu", ["x"], ["y"])], [X], [Y])
    g, r = _run(m)
    assert op_types(g) == ["Relu"] and r.stats["nodes_removed"] == 50
    again = run_pass(g, "dce")
    assert not again.modified


def test_unused_graph_inputs_and_outputs_fed_by_inputs_stay():
    m = make_model([h.make_node("Exp", ["unused_in"], ["dead"])],
                   [X, tensor_info("unused_in", T.FLOAT, [2])], [tensor_info("x", T.FLOAT, [2, 3])])
    g, r = _run(m)
    assert op_types(g) == [] and [v.name for v in g.inputs] == ["x", "unused_in"]
    assert r.stats == {"nodes_removed": 1, "initializers_removed": 0}
