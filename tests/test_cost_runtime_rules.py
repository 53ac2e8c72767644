"""Cost-model terms for how runtimes really behave: ONNX Runtime's Q/DQ Conv rule, the
last-level cache, thread scaling (no timing: the numbers come from the model)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh

from compiler.cost.kernels import kernels
from compiler.cost.layer_proxy import speed_proxy
from compiler.cost.model import predict, thread_scale, threads_used
from compiler.cost.params import Params, prior_params
from compiler.onnx_io import import_onnx
from compiler.precision_api import apply_precision
from passes.shape_inference import infer_shapes
from targets.devices import get_profile
from targets.profile import Sourced
from tests.stand_ins import vnni_host


def _conv_graph():
    """Conv -> Relu -> Conv (graph output): after int8 lowering the second Conv's result is
    not re-quantized."""
    rng = np.random.default_rng(0)
    inits = [nh.from_array(rng.standard_normal((16, 16, 3, 3)).astype(np.float32) * .1, f"w{i}")
             for i in range(2)]
    nodes = [h.make_node("Conv", ["x", "w0"], ["a"], name="c1", pads=[1] * 4),
             h.make_node("Relu", ["a"], ["r"], name="r1"),
             h.make_node("Conv", ["r", "w1"], ["y"], name="c2", pads=[1] * 4)]
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [1, 16, 16, 16])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 16, 16, 16])], inits)
    model = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    graph = import_onnx(model)
    calib = [{"x": rng.standard_normal((1, 16, 16, 16)).astype(np.float32)} for _ in range(2)]
    apply_precision(graph, vnni_host(), "openvino", "int8", calib, {},
                    proxy=speed_proxy(graph, vnni_host(), "openvino"))
    infer_shapes(graph)
    return graph


def test_ort_int8_conv_without_requantized_result_is_float_plus_weight_dequantize():
    g, prof = _conv_graph(), get_profile("host")
    ort, notes = kernels(g, {"backend": "onnxruntime"}, prof)
    ov, _ = kernels(g, {"backend": "openvino"}, prof)
    conv_prec = {k.name: k.precision for k in ort if k.op_class == "conv"}
    assert conv_prec == {"c1": "int8", "c2": "fp32"}  # c1 -> Relu -> Q: an integer kernel
    assert {k.precision for k in ov if k.op_class == "conv"} == {"int8"}
    assert any("ONNX Runtime runs them in float" in n for n in notes)
    # beyond OpenVINO's kernels: c2's weight and activation DequantizeLinear run on their own,
    # and the NHWC int8 region around c1 begins and ends with a Transpose
    extra = sorted(k.ops[0] for k in ort)
    for k in ov:
        extra.remove(k.ops[0])
    assert extra == ["DequantizeLinear", "DequantizeLinear", "Transpose", "Transpose"]


def test_thread_scale():
    assert threads_used(0, 4) == 4 and threads_used(8, 4) == 4 and threads_used(1, 4) == 1
    assert thread_scale(threads_used(0, 4), 4, 0.8) == 1.0
    assert thread_scale(1, 2, 1.0) == pytest.approx(0.5)
    assert thread_scale(1, 2, 0.5) == pytest.approx(1 / 1.5)


def test_cached_model_reads_at_cache_bandwidth():
    """A batch-1 GEMV is memory-bound: with its weights in the last-level cache it is predicted
    faster, by the fitted cache/DRAM bandwidth ratio; without a known cache size, DRAM only."""
    rng = np.random.default_rng(1)
    w = nh.from_array(rng.standard_normal((1024, 1024)).astype(np.float32), "w")
    g = h.make_graph([h.make_node("MatMul", ["x", "w"], ["y"])], "g",
                     [h.make_tensor_value_info("x", T.FLOAT, [1, 1024])],
                     [h.make_tensor_value_info("y", T.FLOAT, [1, 1024])], [w])
    graph = import_onnx(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]))
    host = get_profile("host")
    cpu = dataclasses.replace(host.main_unit, cache_bytes=Sourced(64 * 2**20, "test"))
    nocache = dataclasses.replace(host.main_unit, cache_bytes=None)
    with_c = dataclasses.replace(host, compute_units=(cpu,))
    without = dataclasses.replace(host, compute_units=(nocache,))
    p = Params.from_dict({**prior_params(host, "onnxruntime").to_dict(), "launch_us": 0.0,
                          "call_us": 0.0, "inv_bw": 1.0, "inv_bw_cache": 0.25})
    t_cache = predict(graph, {"backend": "onnxruntime"}, with_c, calibration=p).latency_ms
    t_dram = predict(graph, {"backend": "onnxruntime"}, without, calibration=p).latency_ms
    assert t_cache == pytest.approx(0.25 * t_dram, rel=1e-6)


def _graph(nodes, inputs, inits):
    g = h.make_graph(nodes, "g", [h.make_tensor_value_info(n, T.FLOAT, s) for n, s in inputs],
                     [h.make_tensor_value_info(nodes[-1].output[0], T.FLOAT, None)], inits)
    graph = import_onnx(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]))
    infer_shapes(graph)
    return graph


def test_ort_keeps_elementwise_chains_apart_and_native_fusers_merge_them():
    """ONNX Runtime's CPU fusions give a MatMul at most two epilogues and never merge an
    elementwise chain on its own; OpenVINO/TVM fuse the chain into one kernel."""
    rng = np.random.default_rng(0)
    w = nh.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w")
    b = nh.from_array(rng.standard_normal(64).astype(np.float32), "b")
    nodes = [h.make_node("MatMul", ["x", "w"], ["m"]), h.make_node("Add", ["m", "b"], ["a"]),
             h.make_node("Relu", ["a"], ["r"]), h.make_node("Sigmoid", ["r"], ["s"]),
             h.make_node("Tanh", ["s"], ["t"])]
    g, host = _graph(nodes, [("x", [4, 64])], [w, b]), get_profile("host")
    ort = kernels(g, {"backend": "onnxruntime"}, host)[0]
    basic = kernels(g, {"backend": "onnxruntime", "fusion": False}, host)[0]
    ov = kernels(g, {"backend": "openvino"}, host)[0]
    assert [k.ops for k in ort] == [("MatMul", "Add", "Relu"), ("Sigmoid",), ("Tanh",)]
    assert len(basic) == 5 and len(ov) == 1


def test_depthwise_conv_is_its_own_class_with_a_short_reduction():
    rng = np.random.default_rng(0)
    w = nh.from_array(rng.standard_normal((32, 1, 3, 3)).astype(np.float32), "w")
    g = _graph([h.make_node("Conv", ["x", "w"], ["y"], group=32, pads=[1] * 4)],
               [("x", [1, 32, 28, 28])], [w])
    (k,), _ = kernels(g, {"backend": "onnxruntime"}, get_profile("host"))
    assert k.op_class == "dwconv" and k.depth == pytest.approx(9.0)


def test_short_reductions_cost_more_per_flop():
    """Same FLOPs, K = 8 vs K = 512: the short dot products run at K / (K + K_half) of the
    efficiency, so the thin layer is predicted slower."""
    host = get_profile("host")
    p = Params.from_dict({**prior_params(host, "onnxruntime").to_dict(), "depth_half": 32.0})
    rng = np.random.default_rng(0)

    def mm(m, k, n):
        w = nh.from_array(rng.standard_normal((k, n)).astype(np.float32), "w")
        return _graph([h.make_node("MatMul", ["x", "w"], ["y"])], [("x", [m, k])], [w])

    thin = predict(mm(4096, 8, 64), {"backend": "onnxruntime"}, host, calibration=p)
    deep = predict(mm(64, 512, 64), {"backend": "onnxruntime"}, host, calibration=p)
    assert thin.nodes[0]["flops"] == deep.nodes[0]["flops"]
    assert thin.nodes[0]["ms"] > 2 * deep.nodes[0]["ms"]


def test_ort_half_precision_on_x86_runs_in_fp32_and_search_prunes_it():
    from compiler.search import search

    rng = np.random.default_rng(0)
    w = nh.from_array(rng.standard_normal((64, 64)).astype(np.float32), "w")
    g = _graph([h.make_node("MatMul", ["x", "w"], ["y"])], [("x", [4, 64])], [w])
    x86 = vnni_host()  # a fixed x86 profile without Arm fp16 arithmetic
    ks, notes = kernels(g, {"backend": "onnxruntime", "precision": "fp16"}, x86)
    assert ks[0].precision == "fp32" and any("no half-precision" in n for n in notes)
    assert kernels(g, {"backend": "openvino", "precision": "fp16"}, x86)[0][0].precision == "fp16"
    res = search(g, x86, backends=["onnxruntime"], precisions=("fp32", "fp16"), legality=False)
    assert {c.config["precision"] for c in res.candidates} == {"fp32"}
    assert any("runs as fp32" in c.pruned for c in res.pruned)


def test_half_weights_stay_fp32_in_memory_where_the_runtime_has_no_half_kernels():
    """ONNX Runtime on x86 folds the Cast in front of an fp16 MatMul into an fp32 weight, so
    fp16 saves no weight memory there; OpenVINO keeps them half. Lowered and simulated alike."""
    from passes.fp16 import to_fp16

    rng = np.random.default_rng(0)
    w = nh.from_array(rng.standard_normal((256, 256)).astype(np.float32), "w")
    g = _graph([h.make_node("MatMul", ["x", "w"], ["y"])], [("x", [4, 256])], [w])
    x86, half_mb = vnni_host(), 256 * 256 * 2 / 2**20

    def mem(graph, backend, prec):
        p = dataclasses.replace(prior_params(x86, backend), mem_w=1.0, mem_a=0.0,
                                mem_base_mb=0.0)  # memory = resident weights only
        return predict(graph, {"backend": backend, "precision": prec}, x86,
                       calibration=p).memory_mb

    for graph in (g, to_fp16(g)):  # simulated, then lowered
        assert mem(graph, "onnxruntime", "fp16") == pytest.approx(2 * half_mb)
        assert mem(graph, "openvino", "fp16") == pytest.approx(half_mb)
    assert mem(g, "openvino", "fp32") == pytest.approx(2 * half_mb)


def test_search_simulates_int8_on_ort_fused_convs():
    """The search costs ONNX Runtime configurations on the graph edgec's ORT fusion prepared:
    Conv + Relu became FusedConv, which must still be simulated at the policy's precision."""
    from compiler.search import prepare_graph

    rng = np.random.default_rng(0)
    w = nh.from_array(rng.standard_normal((32, 32, 3, 3)).astype(np.float32), "w")
    wh = nh.from_array(rng.standard_normal((4, 32, 1, 1)).astype(np.float32), "wh")
    g = _graph([h.make_node("Conv", ["x", "w"], ["c"], pads=[1] * 4),
                h.make_node("Relu", ["c"], ["r"]), h.make_node("Conv", ["r", "wh"], ["y"])],
               [("x", [1, 32, 28, 28])], [w, wh])
    cfg = {"backend": "onnxruntime", "precision": "int8", "fusion": True}
    prep = prepare_graph(g, cfg, get_profile("host"))
    assert "FusedConv" in {n.op_type for n in prep}
    ks, _ = kernels(prep, cfg, vnni_host())
    # the head's result is a graph output, which the lowering leaves float: ORT's plain Conv
    assert [(k.precision, k.plain) for k in ks if k.op_class == "conv"] == [
        ("int8", False), ("fp32", True)]
    # ... and pays the NHWC Transposes ORT puts around its int8 (QLinearConv) region
    assert sum(k.ops == ("Transpose",) for k in ks) == 2


def test_simulated_int8_on_ort_pays_quantize_and_dequantize_at_region_edges():
    """A graph not lowered yet, costed at int8 for ONNX Runtime: one QuantizeLinear where the
    int8 region starts and one DequantizeLinear where it ends; none between two int8 layers."""
    rng = np.random.default_rng(0)
    ws = [nh.from_array(rng.standard_normal((64, 64)).astype(np.float32), f"w{i}")
          for i in range(2)]
    g = _graph([h.make_node("MatMul", ["x", "w0"], ["a"]), h.make_node("MatMul", ["a", "w1"],
                                                                         ["y"])],
               [("x", [4, 64])], ws)
    ks, _ = kernels(g, {"backend": "onnxruntime", "precision": "int8"}, get_profile("host"))
    assert sorted(k.ops[0] for k in ks) == ["DequantizeLinear", "MatMul", "MatMul",
                                            "QuantizeLinear"]
    ov, _ = kernels(g, {"backend": "openvino", "precision": "int8"}, get_profile("host"))
    assert [k.ops[0] for k in ov] == ["MatMul", "MatMul"]  # fused into its kernels


def _isa(profile, *isa):
    u = dataclasses.replace(profile.main_unit, isa=tuple(isa))
    return dataclasses.replace(profile, compute_units=(u,))


def _ort_casts(graph, tmp_path) -> list[str]:
    """The Casts in ONNX Runtime's optimised graph (level "all", this host's CPU, no fp16
    arithmetic)."""
    import onnx
    import onnxruntime as ort

    from compiler.onnx_io import export_onnx

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "ort_optimized.onnx")
    so.log_severity_level = 3
    ort.InferenceSession(export_onnx(graph).SerializeToString(), so,
                         providers=["CPUExecutionProvider"])
    return [n.name for n in onnx.load(so.optimized_model_filepath).graph.node
            if n.op_type == "Cast"]


def _fp16_cases():
    rng = np.random.default_rng(0)

    def w(name, *shape):
        return nh.from_array(rng.standard_normal(shape).astype(np.float32) * .1, name)

    def i64(name, v):
        return nh.from_array(np.asarray(v, np.int64), name)

    conv = [w("k0", 64, 64, 3, 3), w("k1", 64, 64, 3, 3), w("bias", 64)]

    mm = [w("w0", 64, 64), w("w1", 64, 64), w("w2", 64, 64), w("b", 64)]
    rot = [i64("s0", [0]), i64("e0", [32]), i64("s1", [32]), i64("e1", [64]), i64("ax", [-1]),
           w("cos", 64)]
    return {
        # MatMuls in a row share fp32; the Add between them (no half kernel) too
        "matmul_chain": ([h.make_node("MatMul", ["x", "w0"], ["m0"]),
                          h.make_node("MatMul", ["m0", "w1"], ["m1"]),
                          h.make_node("Add", ["m1", "b"], ["a"]),
                          h.make_node("MatMul", ["a", "w2"], ["y"])], mm),
        # a Transpose (half kernel) between two fp32 MatMuls is isolated: it runs in fp32
        "isolated_transpose": ([h.make_node("MatMul", ["x", "w0"], ["m0"]),
                                h.make_node("Transpose", ["m0"], ["t"], perm=[1, 0]),
                                h.make_node("MatMul", ["t", "w1"], ["y"])], mm),
        # two half ops in a row between fp32 MatMuls stay half: a Cast on each side
        "half_island": ([h.make_node("MatMul", ["x", "w0"], ["m0"]),
                         h.make_node("Transpose", ["m0"], ["t"], perm=[1, 0]),
                         h.make_node("Concat", ["t", "t"], ["t2"], axis=0),
                         h.make_node("MatMul", ["t2", "w1"], ["y"])], mm),
        # rotate-half: Concat(Neg(x2), x1) -> Mul; ORT checks a Concat's first input only
        "rotate_half": ([h.make_node("Slice", ["x", "s0", "e0", "ax"], ["x1"]),
                         h.make_node("Slice", ["x", "s1", "e1", "ax"], ["x2"]),
                         h.make_node("Neg", ["x2"], ["n"]),
                         h.make_node("Concat", ["n", "x1"], ["c"], axis=-1),
                         h.make_node("Mul", ["c", "cos"], ["y"])], rot),
        # a half bias shared by two fp32 convs keeps a Cast per run (a single reader's folds)
        "shared_bias": ([h.make_node("Conv", ["x", "k0", "bias"], ["c0"], pads=[1] * 4),
                         h.make_node("Relu", ["c0"], ["r"]),
                         h.make_node("Conv", ["r", "k1", "bias"], ["y"], pads=[1] * 4)], conv),
        # Softmax has no fp16 kernel: ORT expands its function body (5 kernels)
        "softmax": ([h.make_node("MatMul", ["x", "w0"], ["m0"]),
                     h.make_node("Softmax", ["m0"], ["s"], name="sm"),
                     h.make_node("Transpose", ["s"], ["t"], perm=[1, 0]),
                     h.make_node("Concat", ["t", "t"], ["y"], axis=0)], mm),
    }


@pytest.mark.parametrize("case", list(_fp16_cases()))
def test_ort_fp16_casts_match_the_runtime_graph(case, tmp_path):
    """Regression: the model put a Cast on every edge between an fp32 MatMul and a half node
    and took elementwise ops for half: on the MatMul chain it counted 4+2 Casts where ONNX
    Runtime keeps 1 (it widens isolated half nodes, cancels Cast pairs against the graph's
    own, and has no fp16 Add/Mul/Softmax/Conv on x86). Checked against the Casts in ORT's
    own optimised graph."""
    from passes.fp16 import to_fp16

    nodes, inits = _fp16_cases()[case]
    shape = [1, 64, 8, 8] if case == "shared_bias" else [64, 64]
    g = to_fp16(_graph(nodes, [("x", shape)], inits))
    infer_shapes(g)
    cfg = {"backend": "onnxruntime", "precision": "fp16", "fusion": True}
    x86 = _isa(vnni_host(), "avx2", "avx512f", "avx512_vnni", "avx512_fp16")
    ks, notes = kernels(g, cfg, x86)
    casts = [k for k in ks if k.ops == ("Cast",)]
    assert len(casts) == len(_ort_casts(g, tmp_path)), [k.name for k in casts]
    inserted = sum(k.name.endswith(("/to_fp32", "/to_half")) for k in casts)
    assert any(f"between {inserted} Casts" in n for n in notes)
    assert {k.precision for k in ks if k.op_class == "matmul"} <= {"fp32"}
    if case == "softmax":  # Softmax, then ReduceMax... from its body: 5 kernels
        assert len([k for k in ks if k.name == "sm" or k.name.startswith("sm/")]) == 5
    if case == "shared_bias":  # no constant weight for ORT's NCHWc pass: the plain kernel
        assert [k.plain for k in ks if k.op_class == "conv"] == [True, True]
    arm = _isa(vnni_host(), "neon", "fp16")  # Arm fp16 arithmetic: half kernels, no Casts
    ks_arm, _ = kernels(g, cfg, arm)
    assert not [k for k in ks_arm if k.name.endswith(("/to_fp32", "/to_half"))]
    assert {k.precision for k in ks_arm if k.op_class == "matmul"} <= {"fp16"}


def test_ort_fp16_convs_run_in_fp32_on_x86():
    """ONNX Runtime has no fp16 Conv kernel on x86, AVX512-FP16 or not: the conv runs in fp32
    (its own weights folded to fp32: the NCHWc kernel, as in fp32). On Arm with fp16
    arithmetic it runs in half."""
    from passes.fp16 import to_fp16

    g = to_fp16(_conv_graph())
    cfg = {"backend": "onnxruntime", "precision": "fp16", "fusion": True}
    for isa in (("avx2", "avx512f", "avx512_fp16"), ("avx2", "avx512f")):
        convs = [k for k in kernels(g, cfg, _isa(vnni_host(), *isa))[0] if k.op_class == "conv"]
        assert {k.precision for k in convs} == {"fp32"} and not any(k.plain for k in convs)
    arm = [k for k in kernels(g, cfg, _isa(vnni_host(), "neon", "fp16"))[0]
           if k.op_class == "conv"]
    assert {k.precision for k in arm} == {"fp16"}


def test_conv_speed_falls_on_small_output_planes_where_the_backend_says_so():
    """Same FLOPs (3x3 conv, 64 channels at 28x28 against 128 at 14x14): with a spatial_half
    of 200 (TVM's fit on this host is of that order) the small plane costs more per FLOP; with
    spatial_half 0 the two are equal."""
    rng = np.random.default_rng(0)

    def conv(c, s):
        w = nh.from_array(rng.standard_normal((c, c, 3, 3)).astype(np.float32), "w")
        return _graph([h.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 4)],
                      [("x", [1, c, s, s])], [w])

    big, small = conv(64, 28), conv(128, 14)
    prof = vnni_host()
    ks = kernels(small, {"backend": "tvm"}, prof)[0]
    assert ks[0].spatial == 14 * 14

    def ms(g, half):
        p = dataclasses.replace(prior_params(prof, "tvm"), spatial_half=half, depth_half=0.0,
                                conv_launch_us=0.0, launch_us=0.0, call_us=0.0)
        return predict(g, {"backend": "tvm"}, prof, calibration=p).latency_ms

    assert ms(small, 0.0) == pytest.approx(ms(big, 0.0), rel=0.02)
    assert ms(small, 200.0) > 1.3 * ms(big, 200.0)


def test_ort_dispatches_views_and_shape_reads_of_symbolic_shapes():
    """ONNX Runtime runs Reshape/Unsqueeze and Shape (of a tensor with symbolic dims) as
    kernels, each a dispatch with no data moved; native fusers fold them away."""
    def graph(batch):
        nodes = [h.make_node("Shape", ["x"], ["s"]),
                 h.make_node("Gather", ["s", "zero"], ["n"], axis=0),
                 h.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
                 h.make_node("Concat", ["n1", "minus1"], ["shape"], axis=0),
                 h.make_node("Reshape", ["x", "shape"], ["y"])]
        inits = [nh.from_array(np.array(0, np.int64), "zero"),
                 nh.from_array(np.array([0], np.int64), "axes"),
                 nh.from_array(np.array([-1], np.int64), "minus1")]
        g = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [batch, 4, 4])],
                         [h.make_tensor_value_info("y", T.FLOAT, None)], inits)
        graph = import_onnx(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]))
        infer_shapes(graph)
        return graph

    prof = vnni_host()
    ort = kernels(graph("n"), {"backend": "onnxruntime"}, prof, {"n": 2})[0]
    views = [k for k in ort if k.ops[0] in ("Shape", "Unsqueeze", "Reshape")]
    assert len(views) == 3 and all(k.bytes == 0 and k.op_class == "data" for k in views)
    assert not [k for k in kernels(graph("n"), {"backend": "openvino"}, prof, {"n": 2})[0]
                if k.ops[0] in ("Shape", "Unsqueeze", "Reshape")]
    static = kernels(graph(2), {"backend": "onnxruntime"}, prof)[0]
    # ORT folds Shape -> Gather -> Unsqueeze -> Concat of a static shape at load
    assert [k.ops[0] for k in static] == ["Reshape"]


def test_ort_casts_for_a_model_that_is_fp16_end_to_end(tmp_path):
    """A model stored in fp16 (half inputs and outputs, no Casts of its own) still runs its
    MatMul in fp32 on x86: a Cast in and a Cast out, as ORT's optimised graph has."""
    w = nh.from_array(np.ones((64, 64), np.float16), "w")
    g = h.make_graph([h.make_node("MatMul", ["x", "w"], ["y"])], "g",
                     [h.make_tensor_value_info("x", T.FLOAT16, [4, 64])],
                     [h.make_tensor_value_info("y", T.FLOAT16, [4, 64])], [w])
    graph = import_onnx(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]))
    infer_shapes(graph)
    x86 = _isa(vnni_host(), "avx2", "avx512f")
    ks, _ = kernels(graph, {"backend": "onnxruntime", "fusion": True}, x86)
    casts = [k.name for k in ks if k.ops == ("Cast",)]
    assert sorted(casts) == ["x/to_fp32", "y/to_half"]
    assert len(casts) == len(_ort_casts(graph, tmp_path))


def test_ort_folds_a_quantize_into_qlinear_ops_only_after_dequantized_inputs():
    """Regression: a QuantizeLinear after any Add/Mul was merged into it as QLinearMul, but ORT
    forms QLinearMul only from DQ -> Mul -> Q; a float Mul (an RMSNorm scale) then Q runs as
    two kernels (decoder in int8: 29 QuantizeLinear kernels per run, the model had 20)."""
    def graph(dequantized):
        s = nh.from_array(np.array(0.05, np.float32), "s")
        z = nh.from_array(np.array(0, np.int8), "z")
        g = nh.from_array(np.ones(64, np.float32), "g")
        qx = [h.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
              h.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"])] if dequantized else []
        nodes = qx + [h.make_node("Mul", ["xd" if dequantized else "x", "g"], ["m"]),
                      h.make_node("QuantizeLinear", ["m", "s", "z"], ["mq"]),
                      h.make_node("DequantizeLinear", ["mq", "s", "z"], ["y"])]
        gr = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", T.FLOAT, [16, 64])],
                          [h.make_tensor_value_info("y", T.FLOAT, [16, 64])], [s, z, g])
        out = import_onnx(h.make_model(gr, opset_imports=[h.make_opsetid("", 17)]))
        infer_shapes(out)
        return out

    cfg = {"backend": "onnxruntime", "precision": "int8", "fusion": True}
    plain = [k.ops for k in kernels(graph(False), cfg, vnni_host())[0]]
    assert ("Mul",) in plain and ("QuantizeLinear",) in plain
    qlinear = [k.ops for k in kernels(graph(True), cfg, vnni_host())[0]]
    assert ("Mul", "QuantizeLinear") in qlinear
