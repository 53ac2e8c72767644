"""shape_inference: dtypes and (symbolic) shapes on every value, without reading weights;
ONNX Runtime's symbolic inference fills what ONNX leaves unknown."""

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


def _shapes(g):
    return {o.name: o.shape for n in g for o in n.outputs}


def _mlp():
    rng = np.random.default_rng(0)
    return make_model([h.make_node("MatMul", ["x", "w1"], ["h1"]),
                       h.make_node("Relu", ["h1"], ["a1"]),
                       h.make_node("MatMul", ["a1", "w2"], ["h2"]),
                       h.make_node("Add", ["h2", "b2"], ["y"])],
                      [tensor_info("x", T.FLOAT, ["batch", 8])],
                      [tensor_info("y", T.FLOAT, None)],
                      [const(rng.standard_normal((8, 64)), "w1", np.float32),
                       const(rng.standard_normal((64, 4)), "w2", np.float32),
                       const(np.ones(4), "b2", np.float32)])


def test_matmul_chain_with_symbolic_batch():
    m = _mlp()
    g = compiler.import_onnx(m)
    assert g.nodes[0].outputs[0].shape is None
    r = run_pass(g, "shape_inference")
    assert r.modified and r.stats == {"values_without_shape": 0}
    assert _shapes(g) == {"h1": ("batch", 64), "a1": ("batch", 64), "h2": ("batch", 4),
                          "y": ("batch", 4)}
    assert all(o.dtype == T.FLOAT for n in g for o in n.outputs)
    # Only annotations changed: same nodes, same I/O, same numbers.
    assert op_types(g) == ["MatMul", "Relu", "MatMul", "Add"]
    assert [v.name for v in g.inputs] == ["x"] and [v.name for v in g.outputs] == ["y"]
    assert_same_outputs(m, g, bitwise=True, dims={"batch": 3})


def test_second_run_reports_no_change():
    g = compiler.import_onnx(_mlp())
    assert run_pass(g, "shape_inference").modified
    again = run_pass(g, "shape_inference")
    assert not again.modified and again.stats["values_without_shape"] == 0
    assert again.stats["skipped"] == "all typed"  # nothing left to infer: no re-export
    forced = run_pass(g, "shape_inference", refresh=True)
    assert not forced.modified and "skipped" not in forced.stats


def test_weights_are_not_read():
    g = compiler.import_onnx(_mlp())
    run_pass(g, "shape_inference")
    assert all(v.const._array is None for v in g.initializers.values())


def test_shapes_inside_an_if_branch():
    then_g = h.make_graph([h.make_node("Relu", ["x"], ["t0"]),
                           h.make_node("Transpose", ["t0"], ["t1"], perm=[1, 0])], "then", [],
                          [tensor_info("t1", T.FLOAT, None)])
    else_g = h.make_graph([h.make_node("Transpose", ["x"], ["e0"], perm=[1, 0])], "else", [],
                          [tensor_info("e0", T.FLOAT, None)])
    m = make_model([h.make_node("If", ["cond"], ["y"], then_branch=then_g,
                                else_branch=else_g)],
                   [tensor_info("x", T.FLOAT, ["n", 3]), tensor_info("cond", T.BOOL, [])],
                   [tensor_info("y", T.FLOAT, None)])
    g = compiler.import_onnx(m)
    assert run_pass(g, "shape_inference").modified
    branch = g.nodes[0].attrs["then_branch"].value
    assert _shapes(branch) == {"t0": ("n", 3), "t1": (3, "n")}
    assert g.outputs[0].shape == (3, "n")


def _contrib_gelu():
    return make_model([h.make_node("Gelu", ["x"], ["g"], domain="com.microsoft"),
                       h.make_node("Relu", ["g"], ["y"])],
                      [tensor_info("x", T.FLOAT, ["batch", 16])],
                      [tensor_info("y", T.FLOAT, None)],
                      extra_opsets={"com.microsoft": 1})


def test_symbolic_fallback_fills_what_onnx_cannot_infer():
    # ONNX has no schema for com.microsoft ops, so it leaves g and y without a shape.
    g = compiler.import_onnx(_contrib_gelu())
    r = run_pass(g, "shape_inference", symbolic=False)
    assert _shapes(g) == {"g": None, "y": None}
    assert r.stats == {"values_without_shape": 2}
    g = compiler.import_onnx(_contrib_gelu())
    r = run_pass(g, "shape_inference")
    assert r.modified and r.stats == {"values_without_shape": 0}
    assert _shapes(g) == {"g": ("batch", 16), "y": ("batch", 16)}
    assert g.nodes[0].outputs[0].dtype == T.FLOAT
    assert_same_outputs(_contrib_gelu(), g, dims={"batch": 3})


def _reshape_from_shape():
    return make_model([h.make_node("Shape", ["x"], ["sh"]),
                       h.make_node("Slice", ["sh", "zero", "one"], ["b"]),
                       h.make_node("Concat", ["b", "m1"], ["newshape"], axis=0),
                       h.make_node("Reshape", ["x", "newshape"], ["r"]),
                       h.make_node("Relu", ["r"], ["y"])],
                      [tensor_info("x", T.FLOAT, ["batch", 4, 4])],
                      [tensor_info("y", T.FLOAT, None)],
                      [const([0], "zero", np.int64), const([1], "one", np.int64),
                       const([-1], "m1", np.int64)])


def test_reshape_from_computed_shape_keeps_batch_and_rank():
    g = compiler.import_onnx(_reshape_from_shape())
    run_pass(g, "shape_inference")
    r = g.nodes[3].outputs[0]
    assert r.rank == 2 and r.shape[0] == "batch"
    assert_same_outputs(_reshape_from_shape(), g, dims={"batch": 3})


def test_symbolic_fallback_resolves_a_reshape_with_minus_one():
    # ONNX: Reshape(x[batch,4,4], Concat(Shape(x)[:1], [-1])) -> [batch, unk__0];
    # ONNX Runtime's symbolic inference derives [batch, 16].
    g = compiler.import_onnx(_reshape_from_shape())
    run_pass(g, "shape_inference")
    assert g.nodes[3].outputs[0].shape == ("batch", 16)
