"""IR: use-def links, the mutation API, ordering, the networkx view and lazy weights."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper as h

from compiler import import_onnx
from compiler.errors import InvalidModelError
from compiler.ir import Graph, Node, Value


def _chain() -> Graph:
    g = Graph("g")
    x = g.add_input(Value("x", T.FLOAT, ("batch", 4)))
    a = Node("Relu", [x], [Value("a")], name="relu")
    b = Node("Neg", [a.outputs[0]], [Value("b")], name="neg")
    g.extend([a, b])
    g.outputs.append(b.outputs[0])
    return g


def test_use_def_links():
    g = _chain()
    relu, neg = g.nodes
    x = g.inputs[0]
    assert x.uses == [(relu, 0)]
    assert relu.outputs[0].producer is relu and relu.outputs[0].index == 0
    assert relu.outputs[0].consumers() == [neg]
    assert neg.outputs[0].is_graph_output()


def test_set_input_and_replace_all_uses_keep_links_exact():
    g = _chain()
    relu, neg = g.nodes
    x = g.inputs[0]
    neg.set_input(0, x)
    assert relu.outputs[0].uses == [] and (neg, 0) in x.uses
    y = Value("y")
    x.replace_all_uses_with(y)
    assert x.uses == [] and sorted(i for _, i in y.uses) == [0, 0]


def test_remove_refuses_while_used_and_insert_orders():
    g = _chain()
    relu, neg = g.nodes
    with pytest.raises(ValueError, match="still used"):
        g.remove(relu)
    sig = Node("Sigmoid", [relu.outputs[0]], [Value("s")], name="sig")
    g.insert_after(relu, sig)
    assert [n.name for n in g] == ["relu", "sig", "neg"]
    tanh = Node("Tanh", [g.inputs[0]], [Value("t")], name="tanh")
    g.insert_before(relu, tanh)
    assert [n.name for n in g] == ["tanh", "relu", "sig", "neg"]
    g.remove(sig)  # unused output: allowed
    g.remove(tanh)
    assert [n.name for n in g] == ["relu", "neg"] and len(g) == 2
    assert g.inputs[0].uses == [(relu, 0)]


def test_bypass_preserves_graph_output_names():
    g = _chain()
    relu, neg = g.nodes
    assert g.bypass(neg.outputs[0], relu.outputs[0])
    g.remove(neg)
    assert [o.name for o in g.outputs] == ["b"] and g.outputs[0].producer is relu
    # a graph input cannot take an output's name
    assert not g.bypass(g.outputs[0], g.inputs[0])


def test_topological_sort_and_cycle_detection():
    g = Graph("g")
    x = g.add_input(Value("x", T.FLOAT, (1,)))
    a_out, b_out = Value("a"), Value("b")
    b = Node("Neg", [a_out], [b_out], name="b")
    a = Node("Relu", [x], [a_out], name="a")
    g.extend([b, a])
    g.outputs.append(b_out)
    g.topological_sort()
    assert [n.name for n in g] == ["a", "b"]
    a.set_input(0, b_out)
    with pytest.raises(InvalidModelError, match="cycle"):
        g.topological_sort()


def test_networkx_view():
    import networkx as nx

    g = _chain()
    view = g.to_networkx()
    assert view.number_of_nodes() == 2 and view.number_of_edges() == 1
    assert [n.name for n in nx.topological_sort(view)] == ["relu", "neg"]


def test_meta_and_version():
    m = h.make_model(h.make_graph(
        [h.make_node("Relu", ["x"], ["y"])], "g",
        [h.make_tensor_value_info("x", T.FLOAT, [1])],
        [h.make_tensor_value_info("y", T.FLOAT, [1])]),
        opset_imports=[h.make_opsetid("", 13)])
    g = import_onnx(m)
    node = g.nodes[0]
    assert node.version == 13
    node.meta["precision"] = "int8"
    assert node.meta == {"precision": "int8"}


def test_external_weights_are_lazy_and_memory_mapped(tmp_path):
    w = np.arange(4096, dtype=np.float32).reshape(64, 64)
    m = h.make_model(h.make_graph(
        [h.make_node("MatMul", ["x", "W"], ["y"])], "g",
        [h.make_tensor_value_info("x", T.FLOAT, [1, 64])],
        [h.make_tensor_value_info("y", T.FLOAT, [1, 64])],
        [onnx.numpy_helper.from_array(w, "W")]), opset_imports=[h.make_opsetid("", 17)])
    onnx.save_model(m, tmp_path / "m.onnx", save_as_external_data=True,
                    location="m.data", size_threshold=0)
    g = import_onnx(tmp_path / "m.onnx")
    t = g.initializers["W"].const
    assert t.external is not None and t._array is None  # nothing read yet
    arr = t.numpy()
    assert isinstance(arr, np.memmap)
    np.testing.assert_array_equal(arr, w)


def test_scalar_tensor_keeps_rank_zero_on_export():
    """Regression: np.ascontiguousarray turns 0-d arrays into shape (1,)."""
    from compiler.ir import Tensor

    t = Tensor.from_numpy(np.asarray(3, dtype=np.int64), "s")
    proto = t.to_proto()
    assert list(proto.dims) == [] and onnx.numpy_helper.to_array(proto).shape == ()


def test_topological_sort_is_stable():
    g = Graph("g")
    x = g.add_input(Value("x", T.FLOAT, (1,)))
    names = ["c", "a", "d", "b"]
    nodes = [Node("Relu", [x], [Value(n + "_o")], name=n) for n in names]
    g.extend(nodes)
    g.topological_sort()
    assert [n.name for n in g] == names  # independent nodes keep their order
    late = Node("Neg", [nodes[3].outputs[0]], [Value("late_o")], name="late")
    g.insert_before(nodes[0], late)  # uses b, placed first: must move after b only
    g.topological_sort()
    assert [n.name for n in g] == ["c", "a", "d", "b", "late"]
