"""Fusion rules: Conv+BN, MatMul+Add->Gemm, LayerNorm/RMSNorm, GELU (structure, numerics,
refusals, target awareness)."""

from __future__ import annotations

import collections

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from compiler.onnx_io import export_onnx, import_onnx
from passes.base import PassContext, get_pass
from passes.fusion import FusionPass
from targets.base import get_backend

RNG = np.random.default_rng(0)


def model(nodes, inputs, outputs, inits=(), opset=17) -> onnx.ModelProto:
    g = h.make_graph(nodes, "t", [h.make_tensor_value_info(n, T.FLOAT, s) for n, s in inputs],
                     [h.make_tensor_value_info(n, T.FLOAT, s) for n, s in outputs],
                     [nh.from_array(np.asarray(v, np.float32) if np.asarray(v).dtype.kind == "f"
                                    else np.asarray(v), k) for k, v in dict(inits).items()])
    return h.make_model(g, opset_imports=[h.make_opsetid("", opset)], ir_version=8 if opset < 21
                        else 10)


def run_ort(m: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def fuse(m: onnx.ModelProto, backend: str | None = "onnxruntime", **cfg):
    """Import, infer shapes, fuse; returns (graph, stats, fused model)."""
    g = import_onnx(m)
    get_pass("shape_inference").run(g, PassContext())
    ctx = PassContext(backend=get_backend(backend) if backend else None)
    r = FusionPass(**cfg).run(g, ctx)
    return g, r.stats, export_onnx(g)


def ops(g) -> collections.Counter:
    return collections.Counter(n.op_type for n in g)


def feeds_for(m: onnx.ModelProto) -> dict[str, np.ndarray]:
    out = {}
    for i in m.graph.input:
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        out[i.name] = RNG.standard_normal(shape).astype(np.float32)
    return out


def assert_same(before: onnx.ModelProto, after: onnx.ModelProto, tol: float = 1e-4) -> None:
    feeds = feeds_for(before)
    for ref, got in zip(run_ort(before, feeds), run_ort(after, feeds)):
        assert ref.shape == got.shape
        err = float(np.abs(ref - got).max())
        assert err <= tol * max(1.0, float(np.abs(ref).max())), err


# ------------------------------------------------------------------------------- Conv + BN
def _conv_bn(extra_reader: bool = False, bias: bool = True) -> onnx.ModelProto:
    c = 8
    inits = {"w": RNG.standard_normal((c, 3, 3, 3)), "g": RNG.uniform(0.5, 2, c),
             "b": RNG.standard_normal(c), "mu": RNG.standard_normal(c),
             "var": RNG.uniform(0.5, 2, c), "cb": RNG.standard_normal(c)}
    nodes = [h.make_node("Conv", ["x", "w"] + (["cb"] if bias else []), ["z"], pads=[1] * 4),
             h.make_node("BatchNormalization", ["z", "g", "b", "mu", "var"], ["y"],
                         epsilon=1e-3)]
    outs = [("y", [2, c, 8, 8])]
    if extra_reader:
        nodes.append(h.make_node("Relu", ["z"], ["z2"]))
        outs.append(("z2", [2, c, 8, 8]))
    return model(nodes, [("x", [2, 3, 8, 8])], outs, inits)


def test_conv_bn_folds_into_conv():
    for bias in (True, False):
        m = _conv_bn(bias=bias)
        g, stats, out = fuse(m, backend=None)  # plain rewrite: needs no backend
        assert ops(g) == {"Conv": 1}
        assert stats["rules"]["conv_bn"]["rewritten"] == 1
        assert_same(m, out)


def test_conv_bn_refused_when_conv_output_has_another_reader():
    m = _conv_bn(extra_reader=True)
    g, stats, out = fuse(m)
    assert ops(g)["BatchNormalization"] == 1
    assert stats["rules"]["conv_bn"]["refused"] == {
        "intermediate value used outside the pattern": 1}
    assert_same(m, out)


# ------------------------------------------------------------------------------- Gemm
def test_matmul_add_becomes_gemm_for_2d():
    m = model([h.make_node("MatMul", ["x", "w"], ["t"]), h.make_node("Add", ["bias", "t"], ["y"])],
              [("x", [4, 16])], [("y", [4, 8])],
              {"w": RNG.standard_normal((16, 8)), "bias": RNG.standard_normal(8)})
    g, stats, out = fuse(m, backend=None)
    assert ops(g) == {"Gemm": 1}
    assert_same(m, out)


def test_qdq_matmul_from_a_file_is_not_fused():
    """A Q/DQ graph read from a file has no `meta["precision"]`; its quantized MatMul must still
    be left alone (ONNX Runtime runs MatMul(DQ, DQ) + Add as an integer kernel, but a Gemm with
    a float bias falls back to dequantizing the weight on every call, 100x slower)."""
    w = RNG.integers(-127, 127, (16, 8)).astype(np.int8)
    m = model([h.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
               h.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
               h.make_node("DequantizeLinear", ["wq", "ws"], ["wd"], axis=1),
               h.make_node("MatMul", ["xd", "wd"], ["t"]),
               h.make_node("Add", ["t", "bias"], ["y"])],
              [("x", [4, 16])], [("y", [4, 8])],
              {"bias": RNG.standard_normal(8)})
    m.graph.initializer.extend([nh.from_array(w, "wq"),
                                nh.from_array(np.full(8, 0.01, np.float32), "ws"),
                                nh.from_array(np.array(0.05, np.float32), "xs"),
                                nh.from_array(np.array(128, np.uint8), "xz")])
    g, stats, out = fuse(m, backend=None)
    assert ops(g)["MatMul"] == 1 and ops(g)["Add"] == 1 and "Gemm" not in ops(g)
    assert stats["rules"]["matmul_add_gemm"]["refused"] == {
        "node runs quantized: its Q/DQ pattern is left for the backend to fuse": 1}
    assert_same(m, out)


def test_matmul_add_3d_is_a_group_not_gemm():
    m = model([h.make_node("MatMul", ["x", "w"], ["t"]), h.make_node("Add", ["t", "bias"], ["y"])],
              [("x", [2, 4, 16])], [("y", [2, 4, 8])],
              {"w": RNG.standard_normal((16, 8)), "bias": RNG.standard_normal(8)})
    g, stats, out = fuse(m)
    assert ops(g) == {"MatMul": 1, "Add": 1}
    assert stats["rules"]["matmul_add_gemm"]["refused"] == {"MatMul operands are not 2-D": 1}
    kinds = {n.meta["fusion_group"]["kind"] for n in g}
    assert kinds == {"matmul_bias"} and len({n.meta["fusion_group"]["id"] for n in g}) == 1
    assert_same(m, out)


# ------------------------------------------------------------------------------- norms
def _layernorm(opset: int = 17, pow_square: bool = True) -> onnx.ModelProto:
    c = 32
    axes = {"axes": [-1]} if opset < 18 else {}
    ax_in = [] if opset < 18 else ["axes"]
    sq = (h.make_node("Pow", ["d", "two"], ["d2"]) if pow_square
          else h.make_node("Mul", ["d", "d"], ["d2"]))
    nodes = [h.make_node("ReduceMean", ["x"] + ax_in, ["mu"], **axes),
             h.make_node("Sub", ["x", "mu"], ["d"]), sq,
             h.make_node("ReduceMean", ["d2"] + ax_in, ["var"], **axes),
             h.make_node("Add", ["var", "eps"], ["ve"]), h.make_node("Sqrt", ["ve"], ["sd"]),
             h.make_node("Div", ["d", "sd"], ["n"]), h.make_node("Mul", ["n", "gamma"], ["s"]),
             h.make_node("Add", ["beta", "s"], ["y"])]
    inits = {"two": np.float32(2), "eps": np.float32(1e-5), "gamma": RNG.standard_normal(c),
             "beta": RNG.standard_normal(c)}
    if opset >= 18:
        inits["axes"] = np.array([-1], np.int64)
    return model(nodes, [("x", [2, 5, c])], [("y", [2, 5, c])], inits, opset)


def test_layernorm_from_primitives():
    for opset, pow_square in ((17, True), (18, False)):
        m = _layernorm(opset, pow_square)
        g, stats, out = fuse(m)
        assert ops(g) == {"LayerNormalization": 1}, ops(g)
        assert_same(m, out)


def test_layernorm_without_scale_or_bias():
    """Regression: after identity elimination removes `x * 1` (a gamma of ones), or for
    LayerNorm without affine parameters, the scale-less forms must still fuse."""
    full = _layernorm()
    for drop in (("gamma",), ("gamma", "beta")):
        m = onnx.ModelProto()
        m.CopyFrom(full)
        nodes = list(m.graph.node)
        if "gamma" in drop:  # y = n + beta
            nodes = [n for n in nodes if n.op_type != "Mul" or "gamma" not in n.input]
            for n in nodes:
                if n.op_type == "Add" and "s" in n.input:
                    n.input[list(n.input).index("s")] = "n"
        if "beta" in drop:  # y = n
            nodes = [n for n in nodes if not (n.op_type == "Add" and "beta" in n.input)]
            nodes[-1].output[0] = "y"
        del m.graph.node[:]
        m.graph.node.extend(nodes)
        keep = {i for n in nodes for i in n.input}
        inits = [t for t in m.graph.initializer if t.name in keep]
        del m.graph.initializer[:]
        m.graph.initializer.extend(inits)
        g, stats, out = fuse(m)
        assert ops(g) == {"LayerNormalization": 1}, (drop, ops(g))
        assert_same(m, out)


def test_layernorm_meta_only_without_backend_or_old_opset():
    m = _layernorm()
    g, stats, _ = fuse(m, backend=None)
    assert "LayerNormalization" not in ops(g)
    groups = {n.meta["fusion_group"]["id"] for n in g if n.meta.get("fusion_group", {}).get(
        "kind") == "layernorm"}
    assert len(groups) == 1 and stats["rules"]["layernorm"]["grouped"] == 1
    m16 = _layernorm()
    m16.opset_import[0].version = 16
    g, stats, _ = fuse(m16)
    assert "LayerNormalization" not in ops(g) and stats["rules"]["layernorm"]["grouped"] == 1


def test_layernorm_refused_on_wrong_axis():
    m = _layernorm()
    for n in m.graph.node:
        if n.op_type == "ReduceMean":
            n.attribute[0].ints[:] = [1]
    g, stats, _ = fuse(m)
    assert "LayerNormalization" not in ops(g)
    assert set(stats["rules"]["layernorm"]["refused"]) == {"reduction is not over the last axis"}


def test_rmsnorm_becomes_rmsnormalization_at_opset_23_else_group():
    c = 16

    def nodes(opset: int) -> list:
        rm = (h.make_node("ReduceMean", ["x2"], ["ms"], axes=[-1]) if opset < 18
              else h.make_node("ReduceMean", ["x2", "axes"], ["ms"]))
        return [h.make_node("Pow", ["x", "two"], ["x2"]), rm,
             h.make_node("Add", ["ms", "eps"], ["me"]), h.make_node("Sqrt", ["me"], ["r"]),
                h.make_node("Reciprocal", ["r"], ["ir"]), h.make_node("Mul", ["x", "ir"], ["n"]),
                h.make_node("Mul", ["gamma", "n"], ["y"])]
    inits = {"two": np.float32(2), "eps": np.float32(1e-6), "gamma": RNG.standard_normal(c),
             "axes": np.array([-1], np.int64)}
    m = model(nodes(23), [("x", [2, 3, c])], [("y", [2, 3, c])], inits, opset=23)
    g, stats, out = fuse(m)
    assert ops(g) == {"RMSNormalization": 1}
    assert_same(m, out)
    m17 = model(nodes(17), [("x", [2, 3, c])], [("y", [2, 3, c])], inits)
    g, stats, _ = fuse(m17)
    assert "RMSNormalization" not in ops(g) and stats["rules"]["rmsnorm"]["grouped"] == 1


def test_rmsnorm_with_one_over_sqrt_as_div():
    """Regression: torch exports Llama's rsqrt as Div(1, Sqrt(.)), not Reciprocal."""
    c = 16
    nodes = [h.make_node("Pow", ["x", "two"], ["x2"]),
             h.make_node("ReduceMean", ["x2"], ["ms"], axes=[-1]),
             h.make_node("Add", ["ms", "eps"], ["me"]), h.make_node("Sqrt", ["me"], ["r"]),
             h.make_node("Div", ["one", "r"], ["ir"]), h.make_node("Mul", ["x", "ir"], ["n"]),
             h.make_node("Mul", ["gamma", "n"], ["y"])]
    inits = {"two": np.float32(2), "eps": np.array([1e-6], np.float32),
             "one": np.array([1.0], np.float32), "gamma": RNG.standard_normal(c)}
    m = model(nodes, [("x", [2, 3, c])], [("y", [2, 3, c])], inits)
    g, stats, out = fuse(m)
    assert stats["rules"]["rmsnorm"]["grouped"] == 1  # opset 17: recorded as one kernel
    assert_same(m, out)


# ------------------------------------------------------------------------------- GELU
def _gelu_erf() -> onnx.ModelProto:
    nodes = [h.make_node("Div", ["x", "sqrt2"], ["a"]), h.make_node("Erf", ["a"], ["e"]),
             h.make_node("Add", ["e", "one"], ["p"]), h.make_node("Mul", ["x", "p"], ["q"]),
             h.make_node("Mul", ["q", "half"], ["y"])]
    return model(nodes, [("x", [4, 64])], [("y", [4, 64])],
                 {"sqrt2": np.float32(1.4142135), "one": np.float32(1), "half": np.float32(.5)})


def _gelu_tanh() -> onnx.ModelProto:
    nodes = [h.make_node("Mul", ["x", "x"], ["x2"]), h.make_node("Mul", ["x", "x2"], ["x3"]),
             h.make_node("Mul", ["k", "x3"], ["kx3"]), h.make_node("Add", ["x", "kx3"], ["p"]),
             h.make_node("Mul", ["b", "p"], ["i"]), h.make_node("Tanh", ["i"], ["t"]),
             h.make_node("Add", ["one", "t"], ["t1"]), h.make_node("Mul", ["x", "t1"], ["q"]),
             h.make_node("Mul", ["half", "q"], ["y"])]
    return model(nodes, [("x", [4, 64])], [("y", [4, 64])],
                 {"k": np.float32(0.044715), "b": np.float32(0.7978846), "one": np.float32(1),
                  "half": np.float32(.5)})


def test_gelu_erf_and_tanh_forms():
    for build, op in ((_gelu_erf, "Gelu"), (_gelu_tanh, "FastGelu")):
        m = build()
        g, stats, out = fuse(m)
        assert ops(g) == {op: 1}
        assert next(iter(g)).domain == "com.microsoft"
        assert_same(m, out)
        g, stats, _ = fuse(m, backend=None)
        assert stats["groups"] == 1 and all(n.meta["fusion_group"]["kind"] == "gelu" for n in g)


def test_gelu_standard_op_at_opset_20():
    m = _gelu_erf()
    m.opset_import[0].version = 20
    g, _, out = fuse(m)
    (n,) = g
    assert (n.domain, n.op_type, n.attr("approximate")) == ("", "Gelu", "none")
    assert_same(m, out)


def test_gelu_refused_when_intermediate_escapes():
    m = _gelu_erf()
    m.graph.output.append(h.make_tensor_value_info("e", T.FLOAT, [4, 64]))
    g, stats, out = fuse(m)
    assert "Gelu" not in ops(g)
    assert stats["rules"]["gelu_erf"]["refused"] == {
        "intermediate value used outside the pattern": 1}
    assert_same(m, out)


def _conv_act(act: list, inits: dict | None = None) -> onnx.ModelProto:
    nodes = [h.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1])] + act
    return model(nodes, [("x", [1, 3, 8, 8])], [("y", [1, 4, 8, 8])],
                 {"w": RNG.standard_normal((4, 3, 3, 3)), "b": RNG.standard_normal(4),
                  **(inits or {})})


def test_conv_epilogues_relu6_hardsigmoid_hardswish():
    relu6 = _conv_act([h.make_node("Clip", ["c", "lo", "hi"], ["y"])],
                      {"lo": np.float32(0), "hi": np.float32(6)})
    g, _, out = fuse(relu6)
    assert ops(g) == {"FusedConv": 1}
    fc = next(iter(g))
    assert fc.attr("activation") == "Clip" and list(fc.attr("activation_params")) == [0, 6]
    assert_same(relu6, out)
    hsig = _conv_act([h.make_node("HardSigmoid", ["c"], ["y"], alpha=0.25, beta=0.4)])
    g, _, out = fuse(hsig)
    assert ops(g) == {"FusedConv": 1}
    assert list(next(iter(g)).attr("activation_params")) == pytest.approx([0.25, 0.4])
    assert_same(hsig, out)
    # HardSwish has no FusedConv form: one kernel for the cost model, ops unchanged
    hsw = _conv_act([h.make_node("HardSwish", ["c"], ["y"])])
    g, stats, out = fuse(hsw)
    assert ops(g) == {"Conv": 1, "HardSwish": 1}
    assert all(n.meta["fusion_group"]["kind"] == "conv_act" for n in g)
    assert_same(hsw, out)


def test_silu_becomes_quickgelu_alpha_1():
    m = model([h.make_node("Sigmoid", ["x"], ["s"]), h.make_node("Mul", ["s", "x"], ["y"])],
              [("x", [2, 8])], [("y", [2, 8])])
    g, _, out = fuse(m)
    assert ops(g) == {"QuickGelu": 1} and next(iter(g)).attr("alpha") == 1.0
    assert_same(m, out)
    g, stats, _ = fuse(m, backend=None)  # not accepted: recorded as one kernel
    assert ops(g) == {"Sigmoid": 1, "Mul": 1} and stats["rules"]["silu"]["grouped"] == 1


def test_bias_gelu_epilogue():
    m = model([h.make_node("MatMul", ["x", "w"], ["t"]), h.make_node("Add", ["t", "bias"], ["u"])]
              + [n for n in _gelu_erf().graph.node], [("x", [2, 3, 16])], [("y", [2, 3, 64])],
              {"w": RNG.standard_normal((16, 64)), "bias": RNG.standard_normal(64),
               "sqrt2": np.float32(1.4142135), "one": np.float32(1), "half": np.float32(.5)})
    for n in m.graph.node[2:]:
        n.input[:] = ["u" if i == "x" else i for i in n.input]
    g, stats, out = fuse(m)
    assert ops(g) == {"MatMul": 1, "BiasGelu": 1}
    assert_same(m, out)
