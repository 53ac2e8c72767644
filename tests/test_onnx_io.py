"""ONNX ⇄ IR round trips: checker-valid, bit-identical outputs, names/metadata/docs kept."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h

from compiler import export_onnx, import_onnx


def _run(model, feeds):
    src = model if isinstance(model, str) else model.SerializeToString()
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(src, so, providers=["CPUExecutionProvider"]).run(None, feeds)


def _assert_identical(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.dtype == y.dtype and x.shape == y.shape
        assert x.tobytes() == y.tobytes()


def _rich_model() -> onnx.ModelProto:
    """Functions, sparse initializer, metadata, doc strings, value_info, many attr types."""
    fn = h.make_function("custom", "Scale2", ["a"], ["b"],
                         [h.make_node("Constant", [], ["two"], value_float=2.0),
                          h.make_node("Mul", ["a", "two"], ["b"])],
                         opset_imports=[h.make_opsetid("", 17)])
    sparse = h.make_sparse_tensor(
        onnx.numpy_helper.from_array(np.array([1.5, -2.0], np.float32), "S"),
        onnx.numpy_helper.from_array(np.array([1, 6], np.int64), "S_idx"), [2, 4])
    nodes = [
        h.make_node("Scale2", ["x"], ["s"], name="scale", domain="custom", doc_string="fn call"),
        h.make_node("Constant", [], ["S_dense"], name="sparse_const", sparse_value=sparse),
        h.make_node("Add", ["s", "S_dense"], ["t"], name="add_sparse"),
        h.make_node("LeakyRelu", ["t"], ["u"], name="leaky", alpha=0.125),
        h.make_node("Transpose", ["u"], ["v"], name="tr", perm=[1, 0]),
        h.make_node("ReduceSum", ["v", "axes"], ["w"], name="rs", keepdims=0),
        h.make_node("Constant", [], ["c"], name="cst",
                    value=onnx.numpy_helper.from_array(np.array([3.0], np.float32))),
        h.make_node("Mul", ["w", "c"], ["y"], name="out"),
        h.make_node("Concat", ["x", "x"], ["z"], name="cat", axis=0),
    ]
    g = h.make_graph(nodes, "rich", [h.make_tensor_value_info("x", T.FLOAT, [2, 4])],
                     [h.make_tensor_value_info("y", T.FLOAT, [4]),
                      h.make_tensor_value_info("z", T.FLOAT, ["n", 4])],
                     [onnx.numpy_helper.from_array(np.array([1], np.int64), "axes")],
                     sparse_initializer=[sparse], doc_string="graph doc",
                     value_info=[h.make_tensor_value_info("t", T.FLOAT, [2, 4])])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17), h.make_opsetid("custom", 1)],
                     functions=[fn], producer_name="test", doc_string="model doc")
    h.set_model_props(m, {"author": "edgec", "license": "apache"})
    m.graph.node[0].metadata_props.add(key="origin", value="layer0")
    return m


def test_rich_model_round_trip():
    m = _rich_model()
    onnx.checker.check_model(m, full_check=True)
    out = export_onnx(import_onnx(m))
    onnx.checker.check_model(out, full_check=True)
    x = np.random.default_rng(0).standard_normal((2, 4)).astype(np.float32)
    _assert_identical(_run(m, {"x": x}), _run(out, {"x": x}))
    assert out.doc_string == "model doc" and out.graph.doc_string == "graph doc"
    assert {p.key: p.value for p in out.metadata_props} == {"author": "edgec",
                                                             "license": "apache"}
    assert [n.name for n in out.graph.node] == [n.name for n in m.graph.node]
    assert out.graph.node[0].doc_string == "fn call"
    assert out.graph.node[0].metadata_props[0].value == "layer0"
    assert [f.name for f in out.functions] == ["Scale2"]
    assert len(out.graph.sparse_initializer) == 1
    assert out.producer_name == "test"
    assert out.graph.node[3].attribute[0].f == pytest.approx(0.125)


def _control_flow(opset: int) -> onnx.ModelProto:
    then = h.make_graph([h.make_node("Add", ["x", "x"], ["r"])], "then", [],
                        [h.make_tensor_value_info("r", T.FLOAT, [2])])
    els = h.make_graph([h.make_node("Neg", ["x"], ["r2"])], "else", [],
                       [h.make_tensor_value_info("r2", T.FLOAT, [2])])
    body = h.make_graph(
        [h.make_node("Add", ["acc", "x"], ["acc_out"]),
         h.make_node("Identity", ["cond"], ["cond_out"]),
         h.make_node("Identity", ["acc_out"], ["scan"])], "body",
        [h.make_tensor_value_info("i", T.INT64, []), h.make_tensor_value_info("cond", T.BOOL, []),
         h.make_tensor_value_info("acc", T.FLOAT, [2])],
        [h.make_tensor_value_info("cond_out", T.BOOL, []),
         h.make_tensor_value_info("acc_out", T.FLOAT, [2]),
         h.make_tensor_value_info("scan", T.FLOAT, [2])])
    nodes = [h.make_node("ReduceSum", ["x"], ["s"], keepdims=0) if opset < 13 else
             h.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             h.make_node("Greater", ["s", "zero"], ["c"]),
             h.make_node("If", ["c"], ["y"], then_branch=then, else_branch=els),
             h.make_node("Loop", ["n", "", "x"], ["final", "scans"], body=body)]
    g = h.make_graph(nodes, "cf", [h.make_tensor_value_info("x", T.FLOAT, [2])],
                     [h.make_tensor_value_info("y", T.FLOAT, [2]),
                      h.make_tensor_value_info("final", T.FLOAT, [2]),
                      h.make_tensor_value_info("scans", T.FLOAT, [3, 2])],
                     [onnx.numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
                      onnx.numpy_helper.from_array(np.array(3, np.int64), "n")])
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [11, 17, 23])
def test_control_flow_round_trip(opset):
    m = _control_flow(opset)
    out = export_onnx(import_onnx(m))
    onnx.checker.check_model(out, full_check=True)
    x = np.array([1.0, -3.0], np.float32)
    _assert_identical(_run(m, {"x": x}), _run(out, {"x": x}))


def test_opset_7_round_trip():
    w = onnx.numpy_helper.from_array(np.ones((3, 3), np.float32), "W")
    g = h.make_graph([h.make_node("Gemm", ["x", "W", "bias"], ["y"], transB=1)], "g7",
                     [h.make_tensor_value_info("x", T.FLOAT, [1, 3]),
                      h.make_tensor_value_info("W", T.FLOAT, [3, 3]),
                      h.make_tensor_value_info("bias", T.FLOAT, [3])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 3])],
                     [w, onnx.numpy_helper.from_array(np.zeros(3, np.float32), "bias")])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 7)], ir_version=3)
    out = export_onnx(import_onnx(m))
    assert [i.name for i in out.graph.input] == ["x", "W", "bias"]  # initializer listed as input
    assert out.ir_version == 3
    onnx.checker.check_model(out, full_check=True)


def test_external_data_written_back_as_external(tmp_path):
    rng = np.random.default_rng(1)
    w1, w2 = (rng.standard_normal((256, 256)).astype(np.float32) for _ in range(2))
    g = h.make_graph([h.make_node("MatMul", ["x", "W1"], ["a"]),
                      h.make_node("MatMul", ["a", "W2"], ["y"])], "ext",
                     [h.make_tensor_value_info("x", T.FLOAT, [1, 256])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 256])],
                     [onnx.numpy_helper.from_array(w1, "W1"),
                      onnx.numpy_helper.from_array(w2, "W2")])
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    src = tmp_path / "src"
    src.mkdir()
    onnx.save_model(m, src / "m.onnx", save_as_external_data=True, location="weights.bin")
    graph = import_onnx(src / "m.onnx")
    dst = tmp_path / "dst"
    dst.mkdir()
    export_onnx(graph, dst / "model.onnx")
    written = onnx.load(dst / "model.onnx", load_external_data=False)
    assert all(t.data_location == T.EXTERNAL for t in written.graph.initializer)
    assert (dst / "model.onnx.data").stat().st_size >= w1.nbytes + w2.nbytes
    onnx.checker.check_model(str(dst / "model.onnx"), full_check=True)
    x = rng.standard_normal((1, 256)).astype(np.float32)
    _assert_identical(_run(str(src / "m.onnx"), {"x": x}), _run(str(dst / "model.onnx"),
                                                                  {"x": x}))
    # in memory, the weights come back inline
    inline = export_onnx(graph)
    _assert_identical(_run(str(src / "m.onnx"), {"x": x}), _run(inline, {"x": x}))


ZOO = ["tiny", "cnn", "control_flow", "external_data", "decoder",
       pytest.param("siglip", marks=pytest.mark.slow)]


@pytest.mark.parametrize("name", ZOO)
def test_zoo_models_round_trip_bit_identical(name):
    zoo = pytest.importorskip("compiler.zoo")
    path = zoo.get(name)
    graph = import_onnx(path)
    out = export_onnx(graph)
    onnx.checker.check_model(out, full_check=True)
    feeds = zoo.example_inputs(name)
    _assert_identical(_run(str(path), feeds), _run(out, feeds))
    src = onnx.load(str(path), load_external_data=False)
    assert [i.name for i in out.graph.input] == [i.name for i in src.graph.input]
    assert [o.name for o in out.graph.output] == [o.name for o in src.graph.output]
    assert [n.name for n in out.graph.node] == [n.name for n in src.graph.node]
    assert {p.key: p.value for p in out.metadata_props} == \
        {p.key: p.value for p in src.metadata_props}
