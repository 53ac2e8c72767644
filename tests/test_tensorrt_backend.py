"""TensorRT backend: strongly typed ONNX (FP32/FP16), the engine script, trtexec line, legality."""

from __future__ import annotations

import json
import os
import sys
import types
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto as T
from onnx import helper as H
from onnx import numpy_helper as NH

from compiler.errors import CompileError
from compiler.onnx_io import export_onnx, import_onnx
from targets.base import BuildConfig, get_backend
from targets.tensorrt import (
    BUILD_SCRIPT,
    TensorRtBackend,
    TensorRtRunner,
    script_namespace,
    shape_ranges,
    to_fp16,
    value_types,
)

RNG = np.random.default_rng(0)


def _w(name, shape, scale=0.3):
    return NH.from_array((RNG.standard_normal(shape) * scale).astype(np.float32), name)


def _model(nodes, inputs, outputs, inits, opset=17):
    g = H.make_graph(nodes, "g", inputs, outputs, inits)
    m = H.make_model(g, opset_imports=[H.make_opsetid("", opset)])
    onnx.checker.check_model(m, full_check=True)
    return m


def conv_net(batch="N"):
    inits = [_w("w1", (8, 3, 3, 3)), _w("b1", (8,), 0.1), _w("w2", (4, 8, 1, 1)),
             NH.from_array(np.array([1, 1, 2, 2], np.float32), "scales"),
             *(NH.from_array(np.full(4, k == "v" or k == "g", np.float32), k) for k in "gbmv")]
    nodes = [H.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             H.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             H.make_node("MaxPool", ["r1"], ["p1"], name="pool", kernel_shape=[2, 2],
                         strides=[2, 2]),
             H.make_node("Resize", ["p1", "", "scales"], ["u1"], name="resize", mode="nearest"),
             H.make_node("Conv", ["u1", "w2"], ["c2"], name="conv2"),
             H.make_node("BatchNormalization", ["c2", "g", "b", "m", "v"], ["bn"], name="bn"),
             H.make_node("Sigmoid", ["bn"], ["y"], name="sig")]
    return _model(nodes, [H.make_tensor_value_info("x", T.FLOAT, [batch, 3, 16, 16])],
                  [H.make_tensor_value_info("y", T.FLOAT, [batch, 4, 16, 16])], inits)


def attn_net():
    """LayerNorm + attention, plus shape arithmetic through a float Cast (must stay FP32)."""
    i64 = lambda n, a: NH.from_array(np.array(a, np.int64), n)  # noqa: E731
    inits = [_w("wq", (16, 16), 0.2), _w("wk", (16, 16), 0.2),
             NH.from_array(np.array(0.25, np.float32), "scale"),
             NH.from_array(np.ones(16, np.float32), "ln_s"),
             NH.from_array(np.zeros(16, np.float32), "ln_b"),
             i64("two", 2), i64("shp", [0, -1]), i64("zero1", [0])]
    nodes = [H.make_node("LayerNormalization", ["x", "ln_s", "ln_b"], ["ln"], name="ln"),
             H.make_node("MatMul", ["ln", "wq"], ["q"], name="mq"),
             H.make_node("MatMul", ["ln", "wk"], ["k"], name="mk"),
             H.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
             H.make_node("MatMul", ["q", "kt"], ["s"], name="qk"),
             H.make_node("Mul", ["s", "scale"], ["ss"], name="scale_mul"),
             H.make_node("Softmax", ["ss"], ["p"], name="softmax", axis=-1),
             H.make_node("MatMul", ["p", "q"], ["o"], name="pv"),
             H.make_node("Shape", ["o"], ["osh"], name="shape"),
             H.make_node("Gather", ["osh", "two"], ["d"], name="gather", axis=0),
             H.make_node("Cast", ["d"], ["df"], name="cast_f", to=T.FLOAT),
             H.make_node("Sqrt", ["df"], ["sq"], name="sqrt"),
             H.make_node("Cast", ["sq"], ["sqi"], name="cast_i", to=T.INT64),
             H.make_node("Unsqueeze", ["sqi", "zero1"], ["sqi1"], name="unsq"),
             H.make_node("Reshape", ["o", "shp"], ["flat"], name="reshape"),
             H.make_node("Cast", ["sqi1"], ["sqf"], name="cast_back", to=T.FLOAT),
             H.make_node("Mul", ["flat", "sqf"], ["y"], name="out_mul")]
    return _model(nodes, [H.make_tensor_value_info("x", T.FLOAT, ["B", 6, 16])],
                  [H.make_tensor_value_info("y", T.FLOAT, ["B", 96])], inits)


def misc_net():
    """Q/DQ (opset 13: scales must stay FP32), a Constant node, an If reading outer values."""
    then_g = H.make_graph([H.make_node("Add", ["h", "h"], ["t"], name="then_add")], "then", [],
                          [H.make_tensor_value_info("t", T.FLOAT, [2, 8])])
    else_g = H.make_graph([H.make_node("Neg", ["h"], ["e"], name="else_neg")], "else", [],
                          [H.make_tensor_value_info("e", T.FLOAT, [2, 8])])
    inits = [NH.from_array(np.array(0.05, np.float32), "qs"),
             NH.from_array(np.array(0, np.int8), "qz"), _w("w", (8, 8))]
    nodes = [H.make_node("QuantizeLinear", ["x", "qs", "qz"], ["xq"], name="q"),
             H.make_node("DequantizeLinear", ["xq", "qs", "qz"], ["xd"], name="dq"),
             H.make_node("MatMul", ["xd", "w"], ["mm"], name="mm"),
             H.make_node("Constant", [], ["c"], name="const",
                         value=NH.from_array(np.full((1, 8), 0.5, np.float32))),
             H.make_node("Add", ["mm", "c"], ["h"], name="add"),
             H.make_node("If", ["flag"], ["y"], name="if", then_branch=then_g,
                         else_branch=else_g)]
    return _model(nodes, [H.make_tensor_value_info("x", T.FLOAT, [2, 8]),
                          H.make_tensor_value_info("flag", T.BOOL, [])],
                  [H.make_tensor_value_info("y", T.FLOAT, [2, 8])], inits, opset=13)


def _run(model, feeds):
    data = model if isinstance(model, (str, bytes)) else model.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _cos(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# Orin DLA "Native" ops, NVIDIA/Deep-Learning-Accelerator-SW operators/README.md (subset)
DLA_OPS = frozenset({"Add", "AveragePool", "BatchNormalization", "Clip", "Concat", "Conv",
                     "ConvTranspose", "MatMul", "MaxPool", "Mul", "Relu", "Reshape", "Resize",
                     "Sigmoid", "Slice", "Softmax", "Sub", "Tanh", "Transpose"})


def _profile(dla=False, name="jetson-orin-agx"):
    units = [SimpleNamespace(name="gpu", kind="gpu", count=1)]
    if dla:
        units.append(SimpleNamespace(name="dla", kind="dla", count=2, ops=DLA_OPS))
    return SimpleNamespace(name=name, is_host=False, static_shapes=False, compute_units=units,
                           precisions=("fp32", "fp16", "int8"), constraints=())


# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
@pytest.mark.parametrize("make,shape", [(conv_net, (2, 3, 16, 16)), (attn_net, (3, 6, 16))])
def test_emitted_onnx_is_valid_and_matches_ort(tmp_path, precision, make, shape):
    model = make()
    cfg = BuildConfig(precision=precision, options={"max_batch": 8})
    files = TensorRtBackend().emit(import_onnx(model), _profile(), cfg, str(tmp_path))
    assert {"model.onnx", "build_engine.py", "trt_build.json", "trtexec.sh",
            "README.md"} <= set(files)
    path = str(tmp_path / "model.onnx")
    onnx.checker.check_model(path, full_check=True)
    emitted = onnx.load(path)
    onnx.shape_inference.infer_shapes(emitted, strict_mode=True)  # every type is determined
    assert [i.type.tensor_type.elem_type for i in emitted.graph.input] == [T.FLOAT]
    assert [o.type.tensor_type.elem_type for o in emitted.graph.output] == [T.FLOAT]
    x = RNG.standard_normal(shape).astype(np.float32)
    ref, got = _run(model, {"x": x})[0], _run(path, {"x": x})[0]
    assert got.dtype == np.float32 and got.shape == ref.shape
    if precision == "fp32":
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    else:
        assert _cos(got, ref) >= 0.999
        assert np.abs(got - ref).max() <= 2e-2 * np.abs(ref).max()


def test_to_fp16_types_and_copy_semantics():
    g = import_onnx(conv_net())
    before = export_onnx(g).SerializeToString()
    h = to_fp16(g)
    assert export_onnx(g).SerializeToString() == before  # the input graph is untouched
    inits = {k: v.const.dtype for k, v in h.initializers.items()}
    assert inits["scales"] == T.FLOAT  # Resize scales are tensor(float) in the schema
    assert sum(t == T.FLOAT16 for t in inits.values()) == 7
    types = value_types(h)
    conv1 = next(n for n in h if n.name == "conv1")
    assert types[conv1.outputs[0].name] == T.FLOAT16
    # shape arithmetic stays FP32: Sqrt of a dim computed from Shape
    a = to_fp16(import_onnx(attn_net()))
    sqrt = next(n for n in a if n.name == "sqrt")
    assert value_types(a)[sqrt.outputs[0].name] == T.FLOAT
    assert next(n for n in a if n.name == "cast_f").attr("to") == T.FLOAT


def test_to_fp16_weight_sliced_at_computed_offset_is_data():
    i64 = lambda n, a: NH.from_array(np.array(a, np.int64), n)  # noqa: E731
    nodes = [H.make_node("Shape", ["x"], ["s"], name="shape"),
             H.make_node("Gather", ["s", "one"], ["d"], name="gather", axis=0),
             H.make_node("Unsqueeze", ["d", "zero"], ["end"], name="unsq"),
             H.make_node("Slice", ["w", "zero", "end"], ["ws"], name="slice"),
             H.make_node("Add", ["x", "ws"], ["y"], name="add")]
    m = _model(nodes, [H.make_tensor_value_info("x", T.FLOAT, ["B", 8])],
               [H.make_tensor_value_info("y", T.FLOAT, ["B", 8])],
               [_w("w", (64,)), i64("one", 1), i64("zero", [0])])
    h = to_fp16(import_onnx(m))
    assert value_types(h)["ws"] == T.FLOAT16
    assert sum(n.op_type == "Cast" for n in h) == 2  # only at the graph input and output
    x = RNG.standard_normal((3, 8)).astype(np.float32)
    assert _cos(_run(export_onnx(h), {"x": x})[0], _run(m, {"x": x})[0]) >= 0.999


def test_to_fp16_respects_fp32_annotation_and_subgraphs():
    model = misc_net()
    g = import_onnx(model)
    next(n for n in g if n.name == "mm").meta["precision"] = "fp32"
    h = to_fp16(g)
    types = value_types(h)
    assert types[next(n for n in h if n.name == "mm").outputs[0].name] == T.FLOAT
    assert types[next(n for n in h if n.name == "add").outputs[0].name] == T.FLOAT16
    p = export_onnx(h)
    onnx.checker.check_model(p, full_check=True)
    x = RNG.standard_normal((2, 8)).astype(np.float32)
    for flag in (True, False):
        feeds = {"x": x, "flag": np.array(flag)}
        ref, got = _run(model, feeds)[0], _run(p, feeds)[0]
        assert got.dtype == np.float32 and _cos(got, ref) >= 0.999


def test_shape_ranges_defaults_and_errors():
    g = import_onnx(conv_net())
    r = shape_ranges(g, BuildConfig(options={"max_batch": 8}))
    assert r == {"x": {"min": [1, 3, 16, 16], "opt": [1, 3, 16, 16], "max": [8, 3, 16, 16]}}
    r = shape_ranges(g, BuildConfig(shapes={"x": (4, 3, 16, 16)}, options={"max_batch": 16}))
    assert r["x"]["opt"] == [4, 3, 16, 16] and r["x"]["max"][0] == 16
    assert shape_ranges(g, BuildConfig(shapes={"x": (2, 3, 16, 16)}), static=True)["x"] == {
        k: [2, 3, 16, 16] for k in ("min", "opt", "max")}
    explicit = {"x": {"min": [1, 3, 16, 16], "opt": [2, 3, 16, 16], "max": [4, 3, 16, 16]}}
    assert shape_ranges(g, BuildConfig(options={"shape_ranges": explicit})) == explicit
    seq = _model([H.make_node("Relu", ["x"], ["y"])],
                 [H.make_tensor_value_info("x", T.FLOAT, ["B", "S", 8])],
                 [H.make_tensor_value_info("y", T.FLOAT, ["B", "S", 8])], [])
    with pytest.raises(CompileError, match=r"input 'x' dim 1 \('S'\) is dynamic.*shapes="):
        shape_ranges(import_onnx(seq), BuildConfig())


# ---------------------------------------------------------------------------------------------
# the build script, run against a fake tensorrt module
class _FakeTrt:
    """Just enough of the TensorRT Python API to run build_engine.py's logic."""

    def __init__(self, parse_ok=True):
        calls = self.calls = {"set_shape": {}, "flags": set(), "pool": {}}
        trt = types.ModuleType("tensorrt")
        trt.__version__ = "11.0-fake"
        trt.NetworkDefinitionCreationFlag = SimpleNamespace(STRONGLY_TYPED=1)
        trt.MemoryPoolType = SimpleNamespace(WORKSPACE="workspace")
        trt.DeviceType = SimpleNamespace(GPU="gpu", DLA="dla")
        trt.BuilderFlag = SimpleNamespace(GPU_FALLBACK="gpu_fallback")

        class Logger:
            WARNING = 2

            def __init__(self, level):
                calls["log_level"] = level

        class Network:
            def __init__(self, flags):
                calls["network_flags"] = flags
                self.inputs = []

            @property
            def num_inputs(self):
                return len(self.inputs)

            def get_input(self, i):
                return self.inputs[i]

        class Parser:
            def __init__(self, network, logger):
                self.network = network
                self.num_errors = 0 if parse_ok else 1

            def parse_from_file(self, path):
                calls["parsed"] = path
                m = onnx.load(path, load_external_data=False)
                skip = {i.name for i in m.graph.initializer}
                for vi in m.graph.input:
                    if vi.name not in skip:
                        dims = tuple(d.dim_value if d.HasField("dim_value") else -1
                                     for d in vi.type.tensor_type.shape.dim)
                        self.network.inputs.append(SimpleNamespace(name=vi.name, shape=dims))
                return parse_ok

            def get_error(self, i):
                return "In node 3 (Foo): UNSUPPORTED_NODE"

        class Profile:
            def set_shape(self, name, lo, opt, hi):
                calls["set_shape"][name] = (tuple(lo), tuple(opt), tuple(hi))

        class Config:
            def set_memory_pool_limit(self, pool, size):
                calls["pool"][pool] = size

            def add_optimization_profile(self, profile):
                calls["profiles"] = calls.get("profiles", 0) + 1

            def set_flag(self, flag):
                calls["flags"].add(flag)

            def __setattr__(self, key, value):
                calls[key] = value

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                return Network(flags)

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                calls["built"] = True
                return b"fake-engine-bytes"

        trt.Logger, trt.Builder, trt.OnnxParser = Logger, Builder, Parser
        self.module = trt


def _emitted_script_ns(out_dir):
    src = (out_dir / "build_engine.py").read_text()
    assert src == BUILD_SCRIPT
    code = compile(src, "build_engine.py", "exec")  # valid Python
    ns = {"__name__": "bundle_script", "__file__": str(out_dir / "build_engine.py")}
    exec(code, ns)
    return ns


def _two_input_model():
    nodes = [H.make_node("Add", ["a", "b"], ["y"], name="add")]
    return _model(nodes, [H.make_tensor_value_info("a", T.FLOAT, ["N", 4]),
                          H.make_tensor_value_info("b", T.FLOAT, ["N", 4])],
                  [H.make_tensor_value_info("y", T.FLOAT, ["N", 4])], [])


def test_build_script_logic_with_fake_tensorrt(tmp_path, monkeypatch):
    cfg = BuildConfig(precision="fp16", options={"max_batch": 8, "workspace_bytes": 1 << 28})
    TensorRtBackend().emit(import_onnx(_two_input_model()), _profile(), cfg, str(tmp_path))
    fake = _FakeTrt()
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    ns = _emitted_script_ns(tmp_path)
    assert ns["main"]([]) == 0  # reads trt_build.json next to the script
    c = fake.calls
    assert c["network_flags"] == 1 << 1  # STRONGLY_TYPED set
    assert c["parsed"].endswith("model.onnx")
    assert c["pool"] == {"workspace": 1 << 28}
    want = ((1, 4), (1, 4), (8, 4))
    assert c["set_shape"] == {"a": want, "b": want} and c["profiles"] == 1
    assert "default_device_type" not in c and not c["flags"]
    assert (tmp_path / "model.engine").read_bytes() == b"fake-engine-bytes"


def test_build_script_dla_and_parser_errors(tmp_path, monkeypatch, capsys):
    cfg = BuildConfig(precision="fp16", shapes={"x": (1, 3, 16, 16)}, options={"dla_core": 1})
    TensorRtBackend().emit(import_onnx(conv_net()), _profile(dla=True), cfg, str(tmp_path))
    settings = json.loads((tmp_path / "trt_build.json").read_text())
    fake = _FakeTrt()
    monkeypatch.setitem(sys.modules, "tensorrt", fake.module)
    ns = _emitted_script_ns(tmp_path)
    ns["build_engine"](str(tmp_path / "model.onnx"), str(tmp_path / "e.engine"), settings)
    c = fake.calls
    assert c["set_shape"]["x"] == ((1, 3, 16, 16),) * 3  # DLA: min = opt = max
    assert c["default_device_type"] == "dla" and c["DLA_core"] == 1
    assert c["flags"] == {"gpu_fallback"}
    bad = _FakeTrt(parse_ok=False)
    monkeypatch.setitem(sys.modules, "tensorrt", bad.module)
    with pytest.raises(RuntimeError, match="UNSUPPORTED_NODE"):
        ns["build_engine"](str(tmp_path / "model.onnx"), str(tmp_path / "f.engine"), settings)
    assert "ONNX parser error" in capsys.readouterr().err
    assert not (tmp_path / "f.engine").exists()


def test_engine_runner_logic_with_fake_tensorrt_and_cuda(tmp_path, monkeypatch):
    """--run: deserialize, set shapes and addresses, execute_async_v3, copy outputs back."""
    import ctypes

    mem: dict[int, ctypes.Array] = {}

    def malloc(n):
        buf = ctypes.create_string_buffer(n)
        mem[ctypes.addressof(buf)] = buf
        return 0, ctypes.addressof(buf)

    rt = types.ModuleType("cuda.bindings.runtime")
    rt.cudaMemcpyKind = SimpleNamespace(cudaMemcpyHostToDevice=1, cudaMemcpyDeviceToHost=2)
    rt.cudaMalloc, rt.cudaStreamCreate = malloc, lambda: (0, 7)
    rt.cudaMemcpy = lambda dst, src, n, kind: (ctypes.memmove(dst, src, n) and 0,)
    rt.cudaStreamSynchronize = lambda s: (0,)
    rt.cudaFree = lambda p: (mem.pop(p) and 0,)
    bindings = types.ModuleType("cuda.bindings")
    bindings.runtime = rt
    trt = types.ModuleType("tensorrt")
    trt.TensorIOMode = SimpleNamespace(INPUT="in", OUTPUT="out")
    trt.Logger = type("Logger", (), {"WARNING": 2, "__init__": lambda self, lvl: None})
    trt.nptype = lambda dt: np.float32

    class Context:
        def __init__(self):
            self.shapes, self.addr = {}, {}

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)

        def get_tensor_shape(self, name):
            return self.shapes["x"]

        def set_tensor_address(self, name, ptr):
            self.addr[name] = ptr

        def execute_async_v3(self, stream):
            assert stream == 7
            n = int(np.prod(self.shapes["x"]))
            x = np.frombuffer(ctypes.string_at(self.addr["x"], 4 * n), np.float32)
            ctypes.memmove(self.addr["y"], (2 * x).tobytes(), 4 * n)
            return True

    class Engine:
        num_io_tensors = 2
        get_tensor_name = staticmethod(lambda i: ["x", "y"][i])
        get_tensor_mode = staticmethod(lambda n: "in" if n == "x" else "out")
        get_tensor_dtype = staticmethod(lambda n: "float")
        get_tensor_shape = staticmethod(lambda n: (-1, 4))
        get_tensor_profile_shape = staticmethod(lambda n, p: [(1, 4), (3, 4), (8, 4)])
        create_execution_context = staticmethod(Context)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, data):
            return Engine() if data == b"engine" else None

    trt.Runtime = Runtime
    for name, mod in (("tensorrt", trt), ("torch", None), ("cuda", types.ModuleType("cuda")),
                      ("cuda.bindings", bindings), ("cuda.bindings.runtime", rt)):
        monkeypatch.setitem(sys.modules, name, mod)
    (tmp_path / "model.engine").write_bytes(b"engine")
    runner = TensorRtBackend().load(str(tmp_path), {})
    assert runner.input_names == ["x"] and runner.output_names == ["y"]
    x = RNG.standard_normal((2, 4)).astype(np.float32)
    np.testing.assert_array_equal(runner.run({"x": x})["y"], 2 * x)
    assert not mem  # device buffers freed
    ns = script_namespace()
    assert ns["main"](["--engine", str(tmp_path / "model.engine"), "--run", "--iters", "2"]) == 0
    (tmp_path / "bad.engine").write_bytes(b"junk")
    with pytest.raises(CompileError, match="cannot deserialize"):
        TensorRtRunner(str(tmp_path / "bad.engine"))


def test_trtexec_line_is_strongly_typed(tmp_path):
    cfg = BuildConfig(precision="fp16", options={"max_batch": 4})
    TensorRtBackend().emit(import_onnx(conv_net()), _profile(), cfg, str(tmp_path))
    text = (tmp_path / "trtexec.sh").read_text()
    assert "--stronglyTyped" in text and "--saveEngine=model.engine" in text
    for flag in ("--fp16", "--int8", "--best", "--layerPrecisions"):
        assert flag not in text
    assert "--minShapes=x:1x3x16x16" in text and "--maxShapes=x:4x3x16x16" in text
    assert os.access(tmp_path / "trtexec.sh", os.X_OK)


def test_build_without_tensorrt_records_a_note(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails
    be = get_backend("tensorrt")
    be.emit(import_onnx(conv_net()), _profile(), BuildConfig(), str(tmp_path))
    assert be.build(str(tmp_path), _profile(), BuildConfig()) == []
    assert "build_note" in json.loads((tmp_path / "trt_build.json").read_text())
    assert not be.can_run(_profile())


# ---------------------------------------------------------------------------------------------
def test_legality_flags_unsupported_ops():
    nodes = [H.make_node("Relu", ["x"], ["r"], name="relu"),
             H.make_node("Unique", ["r"], ["y"], name="uniq", sorted=1),
             H.make_node("FastGelu", ["r"], ["z"], name="custom", domain="com.microsoft")]
    m = H.make_model(H.make_graph(nodes, "g", [H.make_tensor_value_info("x", T.FLOAT, [4])],
                                  [H.make_tensor_value_info("y", T.FLOAT, None),
                                   H.make_tensor_value_info("z", T.FLOAT, None)]),
                     opset_imports=[H.make_opsetid("", 17), H.make_opsetid("com.microsoft", 1)])
    rep = TensorRtBackend().legality(import_onnx(m), _profile())
    assert rep.accelerated == ["relu"]
    assert "operators.md" in rep.unsupported["uniq"]
    assert "plugin" in rep.unsupported["custom"]
    assert not rep.ok


def test_legality_dla_placement():
    be = TensorRtBackend()
    g16 = to_fp16(import_onnx(conv_net(batch=1)))
    rep = be.legality(g16, _profile(dla=True), BuildConfig(options={"dla_core": 0}))
    assert rep.ok and "conv1" in rep.accelerated and "conv2" in rep.accelerated
    assert rep.fallback.get("sig") is None and rep.fallback  # I/O casts are FP32: GPU
    dyn = be.legality(to_fp16(import_onnx(conv_net())), _profile(dla=True),
                      BuildConfig(options={"dla_core": 0}))
    assert not dyn.accelerated and set(dyn.fallback.values()) == {"gpu"}
    assert any("static shapes" in n for n in dyn.notes)
    fp32 = be.legality(import_onnx(conv_net(batch=1)), _profile(dla=True),
                       BuildConfig(options={"dla_core": 0}))
    assert fp32.fallback["conv1"] == "gpu"  # FP32 tensors cannot run on the DLA
    gpu = be.legality(g16, _profile(dla=True))
    assert not gpu.fallback and any("dla_core" in n for n in gpu.notes)


# ---------------------------------------------------------------------------------------------
def _tensorrt_and_gpu() -> bool:
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        return False
    from targets.tensorrt import _gpu_present

    return _gpu_present()


@pytest.mark.gpu
@pytest.mark.skipif(not _tensorrt_and_gpu(), reason="needs tensorrt and a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_real_engine_builds_and_runs(tmp_path, precision):
    be = TensorRtBackend()
    prof = _profile()
    cfg = BuildConfig(precision=precision, options={"max_batch": 4})
    be.emit(import_onnx(conv_net()), prof, cfg, str(tmp_path))
    assert be.build(str(tmp_path), prof, cfg) == ["model.engine"]
    runner = be.load(str(tmp_path), {})
    x = RNG.standard_normal((2, 3, 16, 16)).astype(np.float32)
    got = runner.run({"x": x})["y"]
    ref = _run(str(tmp_path / "model.onnx"), {"x": x})[0]
    assert got.shape == ref.shape and _cos(got, ref) >= 0.999
