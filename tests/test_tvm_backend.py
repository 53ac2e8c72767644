"""TVM backend: host builds match ONNX Runtime, cross builds are real aarch64/CUDA binaries."""

from __future__ import annotations

import json
import platform
import shutil
import struct
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from compiler.errors import ConstraintError, MissingDependencyError, UnsupportedOpError
from compiler.onnx_io import import_onnx
from targets.base import BuildConfig, get_backend

tvm = pytest.importorskip("tvm")
ort = pytest.importorskip("onnxruntime")

EM_AARCH64, EM_X86_64, EM_CUDA = 183, 62, 190
HAS_ARM_GXX = shutil.which("aarch64-linux-gnu-g++") is not None
HAS_NVCC = shutil.which("nvcc") is not None
needs_arm_gxx = pytest.mark.skipif(
    not HAS_ARM_GXX, reason="needs aarch64-linux-gnu-g++ (apt-get install g++-aarch64-linux-gnu)")


# -- stand-in device profiles (duck-typed like targets.profile.DeviceProfile) ----------------

def _cpu(mtriple: str, mcpu: str, cores: int = 4) -> SimpleNamespace:
    return SimpleNamespace(name="cpu", kind="cpu", llvm={"mtriple": mtriple, "mcpu": mcpu},
                           cuda_arch=None, cores=cores)


HOST_LLVM = (("aarch64-linux-gnu", "generic") if platform.machine() in ("aarch64", "arm64")
             else ("x86_64-linux-gnu", "haswell"))


def host_profile() -> SimpleNamespace:
    return SimpleNamespace(name="host", is_host=True, static_shapes=False,
                           compute_units=(_cpu(*HOST_LLVM, 2),))


def rpi5_profile() -> SimpleNamespace:
    return SimpleNamespace(name="raspberry-pi-5", is_host=False, static_shapes=False,
                           compute_units=(_cpu("aarch64-linux-gnu", "cortex-a76"),))


def jetson_profile() -> SimpleNamespace:
    gpu = SimpleNamespace(name="gpu", kind="gpu", llvm=None, cuda_arch="sm_87", cores=None)
    return SimpleNamespace(name="jetson-orin-nano", is_host=False, static_shapes=False,
                           compute_units=(gpu, _cpu("aarch64-linux-gnu", "cortex-a78ae", 6)))


# -- tiny models -----------------------------------------------------------------------------

def _model(nodes, inputs, outputs, inits) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def conv_net() -> onnx.ModelProto:
    """conv(3->8, stride 2) + relu + flatten + gemm(512->10), input [1, 3, 16, 16]."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * .2, "w"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * .1, "b"),
        numpy_helper.from_array(rng.standard_normal((10, 512)).astype(np.float32) * .05, "g"),
        numpy_helper.from_array(rng.standard_normal(10).astype(np.float32), "gb"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1],
                         strides=[2, 2]),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "g", "gb"], ["y"], name="fc", transB=1),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 16, 16])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], inits)


def attention_net() -> onnx.ModelProto:
    """softmax(x @ x^T / 4) @ x and x @ w, with a symbolic batch: two outputs."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array(0.25, np.float32), "scale")]
    nodes = [
        helper.make_node("Transpose", ["x"], ["xt"], name="t", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["x", "xt"], ["s"], name="qk"),
        helper.make_node("Mul", ["s", "scale"], ["ss"], name="scale_mul"),
        helper.make_node("Softmax", ["ss"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "x"], ["y"], name="pv"),
        helper.make_node("MatMul", ["x", "w"], ["z"], name="proj"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 16])
    outs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 16]),
            helper.make_tensor_value_info("z", TensorProto.FLOAT, ["batch", 8, 16])]
    return _model(nodes, [x], outs, inits)


def mlp_net() -> onnx.ModelProto:
    """tanh(x @ w1 + b1) @ w2, x [8, 512]: a blocked matmul (K 512, N 256) and a ragged one
    (N 100), the paths of the CPU default schedules."""
    rng = np.random.default_rng(7)
    inits = [numpy_helper.from_array(rng.standard_normal((512, 256)).astype(np.float32) * .05,
                                     "w1"),
             numpy_helper.from_array(rng.standard_normal(256).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.standard_normal((256, 100)).astype(np.float32) * .1,
                                     "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
             helper.make_node("Tanh", ["hb"], ["t"], name="act"),
             helper.make_node("MatMul", ["t", "w2"], ["y"], name="fc2")]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 512])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [8, 100])], inits)


def loop_net() -> onnx.ModelProto:
    """y = x + 1 applied 3 times by a Loop."""
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [2])])
    inits = [numpy_helper.from_array(np.array(3, np.int64), "n"),
             numpy_helper.from_array(np.array(True), "cond"),
             numpy_helper.from_array(np.ones(2, np.float32), "one")]
    nodes = [helper.make_node("Loop", ["n", "cond", "x"], ["y"], name="repeat", body=body)]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])], inits)


# -- helpers ---------------------------------------------------------------------------------

def _build(model, profile, out: Path, **config) -> tuple[object, list[str]]:
    backend = get_backend("tvm")
    graph = import_onnx(model)
    cfg = BuildConfig(**config)
    report = backend.legality(graph, profile)
    assert report.ok, report.unsupported
    files = backend.emit(graph, profile, cfg, str(out))
    files += backend.build(str(out), profile, cfg)
    for f in files:
        assert (out / f).is_file(), f
    return backend, files


def _elf_machine(path: Path) -> tuple[int, int]:
    """(e_machine, e_flags) of a 64-bit little-endian ELF file."""
    head = path.read_bytes()[:64]
    assert head[:4] == b"\x7fELF" and head[4] == 2 and head[5] == 1, head[:8]
    (machine,) = struct.unpack_from("<H", head, 18)
    (flags,) = struct.unpack_from("<I", head, 48)
    return machine, flags


def _close(ref: np.ndarray, got: np.ndarray) -> None:
    assert ref.shape == got.shape
    err = float(np.abs(ref - got).max())
    assert err <= 1e-3 * float(np.abs(ref).max()), err
    cos = float(np.dot(ref.ravel(), got.ravel())
                / (np.linalg.norm(ref) * np.linalg.norm(got) + 1e-30))
    assert cos >= 0.9999, cos


def _check_host(model, out: Path, feeds: dict[str, np.ndarray], **config) -> dict:
    backend, files = _build(model, host_profile(), out, **config)
    assert backend.can_run(host_profile())
    assert _elf_machine(out / "model.so")[0] in (EM_X86_64, EM_AARCH64)
    runner = backend.load(str(out), {})
    got = runner.run(feeds)
    ref = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, feeds)
    names = [o.name for o in model.graph.output]
    assert runner.output_names == names and list(got) == names
    for name, r in zip(names, ref):
        _close(r, got[name])
    return json.loads((out / "tvm_build.json").read_text())


# -- tests -----------------------------------------------------------------------------------

def test_host_conv_net_matches_onnxruntime(tmp_path):
    x = np.random.default_rng(2).standard_normal((1, 3, 16, 16)).astype(np.float32)
    info = _check_host(conv_net(), tmp_path, {"x": x})
    assert info["target"]["kind"] == "llvm" and info["tuning"]["trials"] == 0
    spec = json.loads((tmp_path / "tvm_target.json").read_text())
    assert spec["target"] == {"kind": "llvm", "mtriple": HOST_LLVM[0], "mcpu": HOST_LLVM[1]}
    assert (tmp_path / "run_tvm.py").read_text().startswith('"""Run this edgec TVM bundle')
    assert get_backend("tvm").versions() == {"tvm": tvm.__version__}


def test_bool_mask_blocks_are_not_vectorized(tmp_path):
    """Regression: the default CPU schedules vectorized a block storing bool (a causal mask in
    the Llama decoder) and LLVM codegen refused it (bool buffer, int8x8 value)."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Less", ["x", "t"], ["m"]),
             helper.make_node("Not", ["m"], ["nm"]),
             helper.make_node("Where", ["nm", "x", "z"], ["y"])]
    inits = [numpy_helper.from_array(np.float32(0.1), "t"),
             numpy_helper.from_array(np.float32(-1e4), "z")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 8])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], inits)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    _check_host(model, tmp_path, {"x": x})


def test_run_script_runs_host_bundle(tmp_path):
    bundle = tmp_path / "bundle"
    _build(conv_net(), host_profile(), bundle)
    x = np.random.default_rng(6).standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.savez(tmp_path / "in.npz", x=x)
    done = subprocess.run(
        [sys.executable, str(bundle / "run_tvm.py"), str(tmp_path / "in.npz"), "--repeat", "2",
         "--save", str(tmp_path / "out.npz")], cwd=tmp_path, capture_output=True, text=True,
        timeout=300)
    assert done.returncode == 0, done.stderr
    assert "median latency" in done.stdout
    ref = ort.InferenceSession(conv_net().SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    _close(ref, np.load(tmp_path / "out.npz")["y"])


@pytest.mark.parametrize("default_schedules", [True, False])
def test_host_mlp_cpu_schedules(tmp_path, default_schedules):
    x = np.random.default_rng(8).standard_normal((8, 512)).astype(np.float32)
    info = _check_host(mlp_net(), tmp_path, {"x": x},
                       options={"default_schedules": default_schedules})
    assert info["tuning"]["default_schedules"] is default_schedules


def test_cpu_rules_schedule_the_matmuls():
    from tvm import relax
    from tvm.relax.frontend.onnx import from_onnx

    from targets.tvm_tune import pipeline

    target = tvm.target.Target({"kind": "llvm", "mtriple": HOST_LLVM[0], "mcpu": HOST_LLVM[1]})
    mod = pipeline(target)(relax.transform.DecomposeOpsForInference()(from_onnx(mlp_net())))
    kernels = {gv.name_hint: f for gv, f in mod.functions_items()
               if isinstance(f, tvm.tirx.PrimFunc)}
    assert any("matmul" in name for name in kernels)
    for name, func in kernels.items():
        assert func.attrs["tirx.is_scheduled"], name
        assert "T.parallel" in func.script(), name


def test_host_symbolic_batch_runs_any_size(tmp_path):
    x = np.random.default_rng(3).standard_normal((3, 8, 16)).astype(np.float32)
    info = _check_host(attention_net(), tmp_path, {"x": x})
    assert info["symbolic_inputs"] == ["x"] and info["inputs"][0]["shape"] == ["batch", 8, 16]


def test_host_bound_shapes(tmp_path):
    x = np.random.default_rng(4).standard_normal((2, 8, 16)).astype(np.float32)
    info = _check_host(attention_net(), tmp_path, {"x": x}, shapes={"x": (2, 8, 16)})
    assert info["symbolic_inputs"] == [] and info["inputs"][0]["shape"] == [2, 8, 16]


def test_bad_shape_binding(tmp_path):
    with pytest.raises(ConstraintError, match="does not fit"):
        _build(attention_net(), host_profile(), tmp_path, shapes={"x": (2, 9, 16)})


def test_legality_and_notes():
    backend = get_backend("tvm")
    report = backend.legality(import_onnx(attention_net()), host_profile())
    assert report.ok and len(report.accelerated) == 6
    assert any("symbolic dims" in n and "batch" in n for n in report.notes)


def test_legality_loop_unsupported():
    report = get_backend("tvm").legality(import_onnx(loop_net()), host_profile())
    assert not report.ok
    assert report.unsupported == {"repeat": "TVM's Relax ONNX frontend has no converter for Loop"}
    with pytest.raises(UnsupportedOpError, match="repeat"):
        report.check()


def test_frontend_failure_is_a_clear_error_and_static_shapes_fix_it(tmp_path):
    """TVM's frontend turns Shape outputs into shape expressions Tile cannot take. With dynamic
    dims left unbound that is a clear error; with static shapes the backend folds the shape
    arithmetic (onnxsim at those shapes) and the model imports."""
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Tile", ["x", "s"], ["y"], name="tile")]
    dynamic = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", 9])], [])
    with pytest.raises(UnsupportedOpError, match="could not import.*onnxsim"):
        _build(dynamic, host_profile(), tmp_path / "dyn")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    _check_host(dynamic, tmp_path / "static", {"x": x}, shapes={"x": (2, 3)})


def test_legality_unknown_domain():
    graph = import_onnx(conv_net())
    graph.nodes[1].domain = "edgec.fused"  # e.g. a fused op another backend accepts
    report = get_backend("tvm").legality(graph, host_profile())
    assert list(report.unsupported) == ["relu"] and "edgec.fused" in report.unsupported["relu"]


def test_target_dicts():
    from targets.tvm_common import tvm_target

    assert tvm_target(rpi5_profile()) == {
        "kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a76"}
    cuda = tvm_target(jetson_profile())
    assert cuda == {"kind": "cuda", "arch": "sm_87", "host": {
        "kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a78ae"}}
    assert tvm_target(jetson_profile(), "cpu")["mcpu"] == "cortex-a78ae"
    target = tvm.target.Target(cuda)
    assert target.kind.name == "cuda" and target.host.kind.name == "llvm"


def test_target_dicts_from_device_table():
    devices = pytest.importorskip("targets.devices")
    from targets.tvm_common import tvm_target

    try:
        orin, pi = devices.get_profile("jetson-orin-nano"), devices.get_profile("raspberry-pi-5")
    except Exception as e:  # the table is being written concurrently
        pytest.skip(f"device table unavailable: {e}")
    assert tvm_target(orin)["host"]["mcpu"] == "cortex-a78ae"
    assert tvm_target(pi)["mcpu"] == "cortex-a76"


@needs_arm_gxx
def test_rpi5_builds_aarch64_shared_object(tmp_path):
    backend, files = _build(conv_net(), rpi5_profile(), tmp_path)
    assert "model.so" in files
    assert (tmp_path / "model.so").read_bytes()[:4] == b"\x7fELF"
    assert _elf_machine(tmp_path / "model.so")[0] == EM_AARCH64
    assert not backend.can_run(rpi5_profile())
    with pytest.raises(Exception, match="cannot run"):
        backend.load(str(tmp_path), {})
    # the stand-in: the same model.onnx built by TVM for this machine
    before = sorted(p.name for p in tmp_path.iterdir())
    runner, what = backend.load_proxy(str(tmp_path), {})
    assert "aarch64-linux-gnu code" in what
    x = np.random.default_rng(9).standard_normal((1, 3, 16, 16)).astype(np.float32)
    ref = ort.InferenceSession(conv_net().SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    _close(ref, runner.run({"x": x})["y"])
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # the bundle is untouched


@needs_arm_gxx
@pytest.mark.skipif(not HAS_NVCC, reason="needs nvcc (CUDA toolkit)")
def test_jetson_builds_cuda_sm87(tmp_path):
    _, files = _build(conv_net(), jetson_profile(), tmp_path)
    assert {"model.so", "model.cu", "model.cubin"} <= set(files)
    assert _elf_machine(tmp_path / "model.so")[0] == EM_AARCH64
    machine, flags = _elf_machine(tmp_path / "model.cubin")
    assert machine == EM_CUDA
    # CUDA >= 12.x cubins keep the SM number in e_flags bits 8..15, older ones in bits 0..7
    assert 87 in ((flags >> 8) & 0xFF, flags & 0xFF), hex(flags)
    info = json.loads((tmp_path / "tvm_build.json").read_text())
    assert info["cuda"]["arch"] == "sm_87" and info["cuda"]["cubin"] == "model.cubin"
    assert "__global__" in (tmp_path / "model.cu").read_text()


@needs_arm_gxx
def test_jetson_cuda_source_only_without_nvcc(tmp_path, monkeypatch):
    import targets.tvm_build as tb

    real_which = shutil.which
    monkeypatch.setattr(tb.shutil, "which", lambda n: None if n == "nvcc" else real_which(n))
    with pytest.raises(MissingDependencyError, match="nvcc"):
        _build(conv_net(), jetson_profile(), tmp_path / "a")
    _, files = _build(conv_net(), jetson_profile(), tmp_path / "b",
                      options={"cuda_cubin": False})
    assert "model.cubin" not in files and "model.cu" in files
    assert _elf_machine(tmp_path / "b" / "model.so")[0] == EM_AARCH64
    info = json.loads((tmp_path / "b" / "tvm_build.json").read_text())
    assert info["cuda"]["cubin"] is None and len(info["cuda"]["source_sha256"]) == 64


def test_cross_linker_missing_is_clear(tmp_path, monkeypatch):
    import targets.tvm_build as tb

    monkeypatch.setattr(tb.shutil, "which", lambda name: None)
    with pytest.raises(MissingDependencyError, match="g\\+\\+-aarch64-linux-gnu"):
        _build(conv_net(), rpi5_profile(), tmp_path)


def test_tuning_rejected_off_host(tmp_path):
    with pytest.raises(ConstraintError, match="host builds only"):
        _build(conv_net(), rpi5_profile(), tmp_path, options={"tune_trials": 8})


@pytest.mark.slow  # ~45 s on 2 cores: MetaSchedule imports every tensor intrinsic (~25 s)
def test_metaschedule_tuning_small(tmp_path):
    from targets.tvm_tune import ir_json_works

    x = np.random.default_rng(5).standard_normal((2, 8, 16)).astype(np.float32)
    cache = tmp_path / "cache"
    options = {"tune_trials": 8, "tuning_cache": str(cache)}
    if not ir_json_works():  # apache-tvm-ffi 0.1.15.post2 segfaults in tvm.ir.save_json
        with pytest.raises(MissingDependencyError, match="apache-tvm-ffi"):
            _build(attention_net(), host_profile(), tmp_path, shapes={"x": (2, 8, 16)},
                   options=options)
        pytest.skip("this apache-tvm-ffi cannot serialize TVM IR; MetaSchedule needs it")
    info = _check_host(attention_net(), tmp_path / "a", {"x": x}, shapes={"x": (2, 8, 16)},
                       options=options)
    assert info["tuning"]["trials"] == 8 and info["tuning"]["records"] > 0
    assert (cache / "database_tuning_record.json").stat().st_size > 0
    # a second build applies the database without tuning again
    info = _check_host(attention_net(), tmp_path / "b", {"x": x}, shapes={"x": (2, 8, 16)},
                       options={"tuning_cache": str(cache)})
    assert info["tuning"]["trials"] == 0 and info["tuning"]["records"] > 0


def test_missing_tvm_names_the_extra(monkeypatch):
    backend = get_backend("tvm")
    monkeypatch.setitem(sys.modules, "tvm", None)  # makes `import tvm` raise ImportError
    with pytest.raises(MissingDependencyError, match=r"edgec\[tvm\]"):
        backend.legality(import_onnx(conv_net()), host_profile())
    with pytest.raises(MissingDependencyError, match=r"edgec\[tvm\]"):
        backend.build("unused", host_profile(), BuildConfig())
    assert not backend.can_run(host_profile())
    assert backend.versions() == {}


def test_host_library_is_the_backend_build(tmp_path):
    """The cost-calibration harness measures `host_library`: it must compile with the backend's
    pipeline (CPU default schedules), run, and match ONNX Runtime."""
    from tvm import relax

    from targets.tvm_build import host_library

    model = mlp_net()
    path = str(tmp_path / "mlp.so")
    host_library(model, {"x": [8, 512]}, path)
    x = np.random.default_rng(3).standard_normal((8, 512)).astype(np.float32)
    vm = relax.VirtualMachine(tvm.runtime.load_module(path), tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x)).numpy()
    ref = ort.InferenceSession(model.SerializeToString(),
                               providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)
