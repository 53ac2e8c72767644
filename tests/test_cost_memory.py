"""Liveness-based activation memory, fusion groups and precision in the cost model."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compiler.cost.kernels import kernels
from compiler.cost.memory import activation_liveness, weight_bytes
from compiler.cost.model import predict
from compiler.onnx_io import import_onnx
from targets.devices import get_profile

F = TensorProto.FLOAT


def _graph(nodes, inits=(), n=256, out="y"):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", F, [1, n])],
                          [helper.make_tensor_value_info(out, F, None)], list(inits))
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    graph = import_onnx(onnx.shape_inference.infer_shapes(m))
    return graph


def test_liveness_exact_bytes_with_views():
    # x(1 KiB) -> Relu a -> Reshape b (a view of a) -> Add(b, x) y
    shape = numpy_helper.from_array(np.array([1, 256], np.int64), "shape")
    g = _graph([helper.make_node("Relu", ["x"], ["a"]),
                helper.make_node("Reshape", ["a", "shape"], ["b"]),
                helper.make_node("Add", ["b", "x"], ["y"])], [shape])
    live = activation_liveness(g)
    assert live.live_bytes == [2048.0, 2048.0, 3072.0]
    assert live.peak_bytes == 3072.0 and live.peak_step == 2


def test_liveness_frees_dead_values():
    # a chain x -> r1 -> r2 -> r3 -> y: at most input + output of one step are live
    g = _graph([helper.make_node("Relu", ["x"], ["r1"]),
                helper.make_node("Relu", ["r1"], ["r2"]),
                helper.make_node("Relu", ["r2"], ["r3"]),
                helper.make_node("Relu", ["r3"], ["y"])])
    live = activation_liveness(g)
    assert live.live_bytes == [2048.0, 2048.0, 2048.0, 2048.0]
    assert activation_liveness(g, include_inputs=False).live_bytes[0] == 1024.0


def _mlp(n=256):
    inits = [numpy_helper.from_array(np.ones((n, n), np.float32), "w"),
             numpy_helper.from_array(np.ones((n,), np.float32), "b")]
    return _graph([helper.make_node("MatMul", ["x", "w"], ["m"]),
                   helper.make_node("Add", ["m", "b"], ["a"]),
                   helper.make_node("Relu", ["a"], ["y"])], inits, n)


def test_fusion_group_is_one_kernel_with_fewer_bytes():
    host = get_profile("host")
    cfg = {"backend": "onnxruntime", "fusion": False}
    g = _mlp()
    before, _ = kernels(g, cfg, host)
    for node in g:
        node.meta["fusion_group"] = {"id": "g0", "kind": "matmul_bias_relu"}
    after, _ = kernels(g, cfg, host)
    assert len(before) == 3 and len(after) == 1
    assert sum(k.bytes for k in after) < sum(k.bytes for k in before)
    # internal tensors m, a are gone: read x + w + b, write y
    assert after[0].bytes == 1024 + 256 * 256 * 4 + 1024 + 1024
    assert activation_liveness(g).peak_bytes == 2048.0


def test_int8_weights_reduce_memory_and_bytes():
    host = get_profile("host")
    g = _mlp()
    fp32 = predict(g, {"backend": "onnxruntime", "precision": "fp32"}, host)
    int8 = predict(g, {"backend": "onnxruntime", "precision": "int8"}, host)
    assert int8.memory_mb < fp32.memory_mb
    assert sum(r["bytes"] for r in int8.nodes) < sum(r["bytes"] for r in fp32.nodes)
    assert any("simulated" in a for a in int8.assumptions)
    assert weight_bytes(g) == 256 * 256 * 4 + 256 * 4


def test_lowered_int8_graph_uses_int8_peak_and_1_byte_weights():
    from passes.quantize import lower_int8

    class R(dict):
        def __missing__(self, k):
            return (-1.0, 1.0)

    host = get_profile("host")
    g = _mlp()
    lower_int8(g, next(n for n in g if n.op_type == "MatMul"), R())
    ks, notes = kernels(g, {"backend": "openvino"}, host)
    mm = next(k for k in ks if "MatMul" in k.ops)
    assert mm.precision == "int8" and not notes
    assert mm.bytes < 256 * 256 * 2  # weights read at 1 byte each
    assert weight_bytes(g) < 256 * 256 * 2
