"""The model zoo: every model builds, passes the full ONNX checker, runs in ONNX Runtime with the
documented names and shapes, is cached, and (torch models) matches torch."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from compiler import zoo
from compiler.errors import InvalidModelError

REPO = Path(__file__).resolve().parent.parent
L = zoo.DECODER.num_layers

# Output names and shapes of each model for example_inputs(name, batch=2).
EXPECTED_OUTPUTS: dict[str, dict[str, tuple[int, ...]]] = {
    "tiny": {"y": (2, 4)},
    "control_flow": {"y": (2, 3), "trace": (3, 2, 3)},
    "external_data": {"y": (2, 10)},
    "cnn": {"logits": (2, 10)},
    "siglip": {"last_hidden_state": (2, 196, 768), "pooler_output": (2, 768)},
    "decoder": {
        "logits": (2, 3, 1000),
        **{f"present.{i}.{k}": (2, 2, 8, 64) for i in range(L) for k in ("key", "value")},
    },
}
TORCH_MODELS = ("cnn", "siglip", "decoder")


def _needs_torch(name: str) -> None:
    if name in TORCH_MODELS:
        pytest.importorskip("torch")
        pytest.importorskip("transformers")


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(path: Path, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    sess = _session(path)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def test_names_match_table() -> None:
    assert set(zoo.NAMES) == set(EXPECTED_OUTPUTS)


@pytest.mark.parametrize("name", list(EXPECTED_OUTPUTS))
def test_model_builds_checks_runs_and_caches(name: str) -> None:
    _needs_torch(name)
    path = zoo.get(name)
    assert path.is_file() and path.suffix == ".onnx"
    onnx.checker.check_model(str(path), full_check=True)  # path form: external data too
    model = onnx.load(str(path), load_external_data=False)
    assert {o.domain: o.version for o in model.opset_import}.get("", 0) == 17

    feeds = zoo.example_inputs(name, batch=2)
    assert set(feeds) == {i.name for i in model.graph.input}
    outs = _run(path, feeds)
    assert {k: v.shape for k, v in outs.items()} == EXPECTED_OUTPUTS[name]
    assert all(np.isfinite(v).all() for v in outs.values())

    mtime = path.stat().st_mtime_ns
    start = time.perf_counter()
    again = zoo.get(name)
    assert time.perf_counter() - start < 0.5
    assert again == path and again.stat().st_mtime_ns == mtime


def test_example_inputs_deterministic_and_batched() -> None:
    a, b = zoo.example_inputs("tiny", batch=3, seed=1), zoo.example_inputs("tiny", batch=3, seed=1)
    assert a["x"].shape == (3, 8) and a["x"].dtype == np.float32
    np.testing.assert_array_equal(a["x"], b["x"])
    assert not np.array_equal(a["x"], zoo.example_inputs("tiny", batch=3, seed=2)["x"])


def test_unknown_name_lists_known_models(tmp_path: Path) -> None:
    with pytest.raises(InvalidModelError, match="known models: .*tiny"):
        zoo.get("resnet9000", cache_dir=tmp_path)
    with pytest.raises(InvalidModelError):
        zoo.example_inputs("resnet9000")


def test_cache_dir_override_and_no_leftovers(tmp_path: Path) -> None:
    path = zoo.get("external_data", cache_dir=tmp_path)
    assert path.parent.parent == tmp_path
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.data", "model.onnx"]
    # only the model folder and its lock file remain: no temporary folders
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == [
        path.parent.name
    ]
    assert path.parent.name.startswith("external_data-v")


def test_damaged_cache_entry_is_rebuilt(tmp_path: Path) -> None:
    path = zoo.get("tiny", cache_dir=tmp_path)
    path.unlink()
    assert zoo.get("tiny", cache_dir=tmp_path) == path and path.is_file()


def test_builder_version_is_in_cache_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first = zoo.get("tiny", cache_dir=tmp_path)
    builder, version, libs = zoo._MODELS["tiny"]
    monkeypatch.setitem(zoo._MODELS, "tiny", (builder, version + "-changed", libs))
    zoo._cache_key.cache_clear()
    try:
        second = zoo.get("tiny", cache_dir=tmp_path)
    finally:
        zoo._cache_key.cache_clear()
    assert second != first and first.is_file() and second.is_file()


def test_concurrent_builds_agree(tmp_path: Path) -> None:
    code = "import sys; from compiler import zoo; print(zoo.get('external_data', sys.argv[1]))"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    paths = {p.communicate(timeout=120)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(paths) == 1
    onnx.checker.check_model(paths.pop(), full_check=True)
    assert len([p for p in tmp_path.iterdir() if p.is_dir()]) == 1


def test_import_and_handbuilt_models_without_torch(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['torch'] = None; sys.modules['transformers'] = None\n"
        "from compiler import zoo, errors\n"
        "print(zoo.get('tiny', sys.argv[1]).is_file())\n"
        "try:\n    zoo.get('cnn', sys.argv[1])\n"
        "except errors.MissingDependencyError as e:\n    print('missing', e.package)\n"
    )
    res = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["True", "missing", "torch"]


# --------------------------------------------------------------------------- per model


def test_tiny_numerics() -> None:
    path = zoo.get("tiny")
    model = onnx.load(str(path))
    assert [n.op_type for n in model.graph.node] == ["MatMul", "Add", "Relu", "Softmax"]
    w, b = (onnx.numpy_helper.to_array(t) for t in model.graph.initializer)
    x = zoo.example_inputs("tiny", batch=5)["x"]
    z = np.maximum(x @ w + b, 0)
    ref = np.exp(z - z.max(-1, keepdims=True))
    ref /= ref.sum(-1, keepdims=True)
    np.testing.assert_allclose(_run(path, {"x": x})["y"], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_control_flow_numerics(sign: float) -> None:
    path = zoo.get("control_flow")
    ops = [n.op_type for n in onnx.load(str(path)).graph.node]
    assert "If" in ops and "Loop" in ops
    x = np.abs(zoo.example_inputs("control_flow")["x"]) * sign
    v = x * 2 if x.sum() > 0 else x - 1
    trace = []
    for i in range(3):
        v = v + x
        trace.append(v * i)
    outs = _run(path, {"x": x})
    np.testing.assert_allclose(outs["y"], v, rtol=1e-6)
    np.testing.assert_allclose(outs["trace"], np.stack(trace), rtol=1e-6)


def test_external_data_layout() -> None:
    path = zoo.get("external_data")
    model = onnx.load(str(path), load_external_data=False)
    external = [t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert len(external) >= 5
    assert {e.value for t in external for e in t.external_data if e.key == "location"} == {
        "model.data"
    }
    assert (path.parent / "model.data").stat().st_size > 4 << 20


def test_cnn_dynamic_spatial_dims_and_batchnorm() -> None:
    torch = pytest.importorskip("torch")
    from compiler.zoo.builders import cnn_torch_module

    path = zoo.get("cnn")
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("BatchNormalization") == ops.count("Conv") >= 6
    dims = [d.dim_param for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", "", "height", "width"]
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    assert 300_000 < params < 1_000_000
    x = np.random.default_rng(3).standard_normal((3, 3, 48, 80), dtype=np.float32)
    got = _run(path, {"pixel_values": x})["logits"]
    with torch.no_grad():
        ref = cnn_torch_module()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_siglip_matches_torch() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from compiler.zoo.builders import siglip_torch_module

    path = zoo.get("siglip")
    ops = [n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node]
    assert ops.count("Softmax") == 13  # 12 encoder layers + the attention-pooling head
    feeds = zoo.example_inputs("siglip", batch=1)
    got = _run(path, feeds)
    with torch.no_grad():
        hidden, pooled = siglip_torch_module()(torch.from_numpy(feeds["pixel_values"]))
    np.testing.assert_allclose(got["last_hidden_state"], hidden.numpy(), atol=1e-3)
    np.testing.assert_allclose(got["pooler_output"], pooled.numpy(), atol=1e-3)


@pytest.mark.parametrize("batch,seq,past", [(2, 3, 5), (1, 4, 0), (3, 1, 7)])
def test_decoder_matches_torch(batch: int, seq: int, past: int) -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from compiler.zoo.builders import decoder_torch_module

    path = zoo.get("decoder")
    feeds = zoo.decoder_inputs(batch=batch, seq_len=seq, past_len=past, seed=4)
    if past:
        feeds["attention_mask"][0, :2] = 0  # left padding in the first row
    got = _run(path, feeds)
    spec = zoo.DECODER
    with torch.no_grad():
        ref = decoder_torch_module()(*(torch.from_numpy(feeds[n]) for n in spec.input_names()))
    assert list(got) == spec.output_names()
    for name, r in zip(spec.output_names(), ref):
        np.testing.assert_allclose(got[name], r.numpy(), atol=1e-4, err_msg=name)
    assert got["present.0.key"].shape == (batch, spec.num_kv_heads, past + seq, spec.head_dim)


# --------------------------------------------------------------------------- generators


def test_large_external_model_streams(tmp_path: Path) -> None:
    total, tensor = 96 << 20, 8 << 20
    path = tmp_path / "big.onnx"
    tracemalloc.start()
    try:
        zoo.make_large_external_model(path, total, tensor)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 3 * tensor, f"peak {peak / 2**20:.1f} MiB"
    data = tmp_path / "big.data"
    assert data.stat().st_size == total
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.data", "big.onnx"]
    onnx.checker.check_model(str(path), full_check=True)
    assert os.path.getsize(path) < 64 << 10
    weights = np.memmap(data, dtype=np.float32, mode="r")
    expect = 1.5 + sum(
        weights[i : i + tensor // 4].astype(np.float64).sum()
        for i in range(0, total // 4, tensor // 4)
    )
    got = _run(path, {"x": np.array([1.5], np.float32)})["y"]
    np.testing.assert_allclose(got, [expect], rtol=1e-4, atol=1e-2)


def test_large_external_model_unaligned_sizes(tmp_path: Path) -> None:
    path = zoo.make_large_external_model(tmp_path / "odd.onnx", 10_000, tensor_bytes=3_000)
    model = onnx.load(str(path), load_external_data=False)
    assert [list(t.dims) for t in model.graph.initializer] == [[750], [750], [750], [250]]
    offsets = [
        int(e.value) for t in model.graph.initializer for e in t.external_data if e.key == "offset"
    ]
    assert all(o % 4096 == 0 for o in offsets)
    onnx.checker.check_model(str(path), full_check=True)
    loaded = onnx.load(str(path))
    expect = sum(onnx.numpy_helper.to_array(t).sum() for t in loaded.graph.initializer)
    got = _run(path, {"x": np.zeros(1, np.float32)})["y"]
    np.testing.assert_allclose(got, [expect], rtol=1e-5, atol=1e-5)


def test_chain_graph_runs_and_matches_numpy() -> None:
    model = zoo.make_chain_graph(2001)
    assert len(model.graph.node) == 2001
    onnx.checker.check_model(model, full_check=True)
    x = np.random.default_rng(0).standard_normal((1, 16), dtype=np.float32)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"x": x})[0]
    env = {"x": x, "half": np.float32(0.5)}
    fns = {
        "Add": np.add,
        "Mul": np.multiply,
        "Relu": lambda a: np.maximum(a, 0),
        "Identity": lambda a: a,
    }
    for node in model.graph.node:
        env[node.output[0]] = fns[node.op_type](*(env[i] for i in node.input))
    np.testing.assert_allclose(got, env["y"], rtol=1e-5, atol=1e-6)
    assert np.isfinite(got).all()


def test_chain_graph_100k_nodes_is_fast() -> None:
    start = time.perf_counter()
    model = zoo.make_chain_graph(100_000)
    elapsed = time.perf_counter() - start
    assert len(model.graph.node) == 100_000
    assert elapsed < 5.0, f"{elapsed:.1f} s"
    onnx.checker.check_model(model)
