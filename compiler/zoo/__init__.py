"""Local test models, shared by the tests, the demo and the benchmarks; built once, cached on disk.

Why: edgec is tested on the kinds of graphs it must compile (a CNN with BatchNorm and dynamic
spatial dims, a ViT vision encoder, a KV-cache decoder, control flow, external data) without
downloading anything. Torch models get random weights from their configs (seed 0), so a build
is deterministic for given torch/transformers versions.

`get(name)` returns the path of `<cache>/<name>-<key>/model.onnx`, building it on first use.
The key hashes the zoo's and the model's builder versions and the versions of the libraries that
produce it, so a changed builder or library gets a fresh folder. A build happens in a temporary
folder renamed into place (atomic), under a file lock, so concurrent test processes never see
half a model. Default cache: `<repo>/.cache/zoo/`.

Models (opset 17, IR version 8 for the hand-built ones; torch is needed only for the first three):

- `cnn`: conv-bn-relu blocks, a residual Add, a depthwise conv, global average pool, Linear;
  ~0.58 M params. `pixel_values` float [batch, 3, height, width] -> `logits` [batch, 10].
  BatchNormalization stays in the graph (exported with constant folding off).
- `siglip`: SigLIP-B/16 vision encoder at 224 px (transformers defaults, ~93 M params incl. the
  attention-pooling head, ~370 MB inline), eager attention (MatMul/Softmax/MatMul).
  `pixel_values` [batch, 3, 224, 224] -> `last_hidden_state` [batch, 196, 768],
  `pooler_output` [batch, 768].
- `decoder`: Llama-style (`DECODER`: 4 layers, hidden 256, 4 heads, 2 KV heads, head_dim 64,
  vocab 1000), eager attention, KV cache in and out. Inputs `input_ids` int64
  [batch, sequence_length], `attention_mask` int64 [batch, total_sequence_length],
  `position_ids` int64 [batch, sequence_length], `past_key_values.{i}.key|value` float
  [batch, 2, past_sequence_length, 64]; outputs `logits` [batch, sequence_length, 1000],
  `present.{i}.key|value` [batch, 2, total_sequence_length, 64]. past_sequence_length may be 0.
- `control_flow`: `x` float [2, 3] -> `y` [2, 3], `trace` [3, 2, 3]; an If whose branches read
  outer-scope values and a Loop with a loop-carried value and a scan output.
- `external_data`: MLP 256-1024-1024-10 (~5 MB) stored as `model.onnx` + `model.data`.
  `x` float [batch, 256] -> `y` [batch, 10].
- `tiny`: softmax(relu(x @ w + b)); `x` float [batch, 8] -> `y` [batch, 4].

Generators for scale tests: `make_large_external_model` (GBs of external weights, written in
chunks, low memory) and `make_chain_graph` (100k-node graphs in about a second).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from compiler.errors import InvalidModelError, MissingDependencyError
from compiler.zoo import builders as _b
from compiler.zoo import exporters as _x
from compiler.zoo.builders import DECODER, DecoderSpec, decoder_inputs

__all__ = [
    "NAMES",
    "DECODER",
    "DecoderSpec",
    "DEFAULT_CACHE_DIR",
    "ZOO_VERSION",
    "get",
    "example_inputs",
    "decoder_inputs",
    "make_large_external_model",
    "make_chain_graph",
    "make_fusion_blocks",
]

ZOO_VERSION = "1"
DEFAULT_CACHE_DIR = Path(__file__).resolve().parents[2] / ".cache" / "zoo"
_MODEL_FILE = "model.onnx"

# name -> (builder, builder version, libraries whose versions enter the cache key)
_TORCH_LIBS = ("torch", "transformers", "onnx")
_MODELS: dict[str, tuple[Callable[[Path], Path], str, tuple[str, ...]]] = {
    "cnn": (_b.build_cnn, "1", ("torch", "onnx")),
    "siglip": (_b.build_siglip, "1", _TORCH_LIBS),
    "decoder": (_b.build_decoder, "1", _TORCH_LIBS),
    "control_flow": (_b.build_control_flow, "1", ("onnx",)),
    "external_data": (_b.build_external_data, "1", ("onnx",)),
    "tiny": (_b.build_tiny, "1", ("onnx",)),
}
NAMES: tuple[str, ...] = tuple(_MODELS)
# Exporter variants (compiler.zoo.exporters): built when a test or benchmark asks for one, not
# part of NAMES (the suite does not build them all).
_MODELS.update({
    "siglip_sdpa_torchscript": (_x.build_siglip_sdpa_torchscript, "1", _TORCH_LIBS),
    "siglip_sdpa_dynamo": (_x.build_siglip_sdpa_dynamo, "1", (*_TORCH_LIBS, "onnxscript")),
})


def _check_name(name: str) -> None:
    if name not in _MODELS:
        raise InvalidModelError(f"unknown zoo model {name!r}; known models: {', '.join(NAMES)}")


@functools.cache
def _cache_key(name: str) -> str:
    _, version, libs = _MODELS[name]
    parts = [f"zoo={ZOO_VERSION}", f"{name}={version}"]
    for lib in libs:
        try:
            parts.append(f"{lib}={metadata.version(lib)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{lib}=none")
    digest = hashlib.sha256("|".join(parts).encode()).hexdigest()[:10]
    return f"{name}-v{ZOO_VERSION}.{version}-{digest}"


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """An exclusive inter-process lock (POSIX flock); a no-op where fcntl is missing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(lock_path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def get(name: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Path to the ONNX file of zoo model `name`, built and cached on first call.

    Raises InvalidModelError for an unknown name and MissingDependencyError when a torch model
    must be built without torch/transformers installed.
    """
    _check_name(name)
    root = Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR
    key = _cache_key(name)
    final = root / key
    model = final / _MODEL_FILE
    if model.is_file():
        return model
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f".{key}.lock"):
        if model.is_file():  # built by another process while we waited
            return model
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-", dir=root))
        try:
            os.chmod(tmp, 0o755)
            try:
                _MODELS[name][0](tmp)
            except ModuleNotFoundError as exc:
                if exc.name and exc.name.split(".")[0] in ("torch", "transformers", "onnxscript"):
                    raise MissingDependencyError(
                        exc.name.split(".")[0], "torch", f"to build the zoo model {name!r}"
                    ) from exc
                raise
            for f in tmp.iterdir():
                os.chmod(f, 0o644)  # onnx writes external data files as 0600
            if final.exists():  # a damaged entry (its model file was removed): replace it
                shutil.rmtree(final)
            os.replace(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return model


def example_inputs(name: str, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    """Valid feeds for zoo model `name` (deterministic in `seed`).

    cnn uses 64x64 images; the decoder feeds 3 new tokens after a 5-token cache (use
    `decoder_inputs` for other lengths); control_flow has a fixed [2, 3] input and ignores
    `batch`.
    """
    _check_name(name)
    rng = np.random.default_rng(seed)
    if name == "cnn":
        return {"pixel_values": rng.standard_normal((batch, 3, 64, 64), dtype=np.float32)}
    if name == "siglip":
        x = rng.uniform(-1.0, 1.0, (batch, 3, 224, 224)).astype(np.float32)
        return {"pixel_values": x}
    if name == "decoder":
        return decoder_inputs(batch=batch, seq_len=3, past_len=5, seed=seed)
    if name == "control_flow":
        return {"x": rng.standard_normal((2, 3), dtype=np.float32)}
    if name == "external_data":
        dim = _b.EXTERNAL_MLP_DIMS[0]
        return {"x": rng.standard_normal((batch, dim), dtype=np.float32)}
    return {"x": rng.standard_normal((batch, 8), dtype=np.float32)}  # tiny


# --------------------------------------------------------------------------- generators

_ALIGN = 4096  # data offsets are page aligned so runtimes can memory-map each tensor
_CHUNK_FLOATS = 4 << 20  # 16 MiB of float32 per write


def make_large_external_model(path: Path, total_bytes: int, tensor_bytes: int = 64 << 20) -> Path:
    """Write a model whose float32 weights total `total_bytes`, as external data.

    Weights are 1-D tensors of `tensor_bytes` (the last one takes the remainder) stored in
    `<stem>.data` next to `path`, page aligned; the graph is
    `y = x + Sum_i ReduceSum(w_i)` with `x`, `y` float [1], so every weight is used. The data
    file is written in 16 MiB chunks: memory stays flat whatever `total_bytes` is. Both files
    appear atomically (temporary names, then os.replace). Returns `path`.
    """
    path = Path(path)
    if total_bytes < 4 or tensor_bytes < 4:
        raise ValueError("total_bytes and tensor_bytes must be at least 4 (one float32)")
    data_path = path.with_name(path.stem + ".data")
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    per_tensor, remaining = tensor_bytes // 4, total_bytes // 4
    inits: list[TensorProto] = []
    tmp_data = data_path.with_name(f".{data_path.name}.tmp-{os.getpid()}")
    tmp_model = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp_data, "wb") as fh:
            offset = 0
            while remaining > 0:
                count = min(per_tensor, remaining)
                pad = -offset % _ALIGN
                fh.write(b"\0" * pad)
                offset += pad
                for start in range(0, count, _CHUNK_FLOATS):
                    n = min(_CHUNK_FLOATS, count - start)
                    (rng.random(n, dtype=np.float32) - np.float32(0.5)).tofile(fh)
                tensor = TensorProto(
                    name=f"w{len(inits)}",
                    data_type=TensorProto.FLOAT,
                    dims=[count],
                    data_location=TensorProto.EXTERNAL,
                )
                for key, value in (
                    ("location", data_path.name),
                    ("offset", str(offset)),
                    ("length", str(count * 4)),
                ):
                    entry = tensor.external_data.add()
                    entry.key, entry.value = key, value
                inits.append(tensor)
                offset += count * 4
                remaining -= count
        nodes = [
            helper.make_node("ReduceSum", [t.name], [f"s{i}"], keepdims=0)
            for i, t in enumerate(inits)
        ]
        nodes.append(helper.make_node("Sum", [f"s{i}" for i in range(len(inits))], ["total"]))
        nodes.append(helper.make_node("Add", ["x", "total"], ["y"]))
        graph = helper.make_graph(
            nodes,
            "large_external",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
            inits,
        )
        model = helper.make_model(
            graph,
            opset_imports=[helper.make_opsetid("", _b.OPSET)],
            ir_version=_b.IR_VERSION,
            producer_name="edgec.zoo",
        )
        with open(tmp_model, "wb") as fh:
            fh.write(model.SerializeToString())
        os.replace(tmp_data, data_path)
        os.replace(tmp_model, path)
    finally:
        for leftover in (tmp_data, tmp_model):
            leftover.unlink(missing_ok=True)
    return path


_CHAIN_OPS = ("Add", "Mul", "Relu", "Identity")
_CHAIN_REUSE = 7  # each Add also reads the value made 7 nodes earlier: branches and joins


def make_chain_graph(n_nodes: int) -> onnx.ModelProto:
    """A runnable graph of `n_nodes` cheap nodes over [1, 16] float tensors.

    Nodes cycle Add(prev, value 7 nodes back) -> Mul(0.5) -> Relu -> Identity, so values stay
    bounded, every node is live, and values are reused across branches. Input `x`, output `y`.
    """
    if n_nodes < 1:
        raise ValueError("n_nodes must be >= 1")
    make_node = helper.make_node
    values = ["x"]
    nodes = []
    for i in range(n_nodes):
        op, prev, out = _CHAIN_OPS[i % 4], values[-1], f"v{i}"
        if op == "Add":
            ins = [prev, values[max(0, len(values) - _CHAIN_REUSE)]]
        elif op == "Mul":
            ins = [prev, "half"]
        else:
            ins = [prev]
        nodes.append(make_node(op, ins, [out], name=f"n{i}"))
        values.append(out)
    nodes[-1].output[0] = "y"
    half = numpy_helper.from_array(np.full((1, 16), 0.5, np.float32), "half")
    graph = helper.make_graph(
        nodes,
        f"chain_{n_nodes}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
        [half],
    )
    return helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", _b.OPSET)],
        ir_version=_b.IR_VERSION,
        producer_name="edgec.zoo",
    )


def make_fusion_blocks(n_blocks: int, seed: int = 0) -> onnx.ModelProto:
    """`n_blocks` repeated blocks, 16 nodes each, over [1, 4, 4, 4] tensors: Conv +
    BatchNormalization, a LayerNorm written in primitives (ReduceMean/Sub/Pow/Sqrt/Div/Mul/Add)
    and an erf-form GELU. Every block is one match for conv_bn, layernorm and gelu_erf; 6250
    blocks make the 100,000-node fusion workload."""
    from onnx import TensorProto
    from onnx import helper as h

    rng = np.random.default_rng(seed)
    consts = {"w": rng.standard_normal((4, 4, 1, 1)), "g": np.ones(4), "be": np.zeros(4),
              "mu": np.zeros(4), "var": np.ones(4), "two": 2.0, "eps": 1e-5,
              "gamma": np.ones(4), "beta": np.zeros(4), "sqrt2": 1.4142135, "one": 1.0,
              "half": 0.5}
    inits = [onnx.numpy_helper.from_array(np.asarray(v, np.float32), k)
             for k, v in consts.items()]
    nodes, x = [], "x"
    for i in range(n_blocks):
        p = f"b{i}_"
        nodes += [h.make_node("Conv", [x, "w"], [p + "c"]),
                  h.make_node("BatchNormalization", [p + "c", "g", "be", "mu", "var"],
                              [p + "bn"]),
                  h.make_node("ReduceMean", [p + "bn"], [p + "m"], axes=[-1]),
                  h.make_node("Sub", [p + "bn", p + "m"], [p + "d"]),
                  h.make_node("Pow", [p + "d", "two"], [p + "d2"]),
                  h.make_node("ReduceMean", [p + "d2"], [p + "v"], axes=[-1]),
                  h.make_node("Add", [p + "v", "eps"], [p + "ve"]),
                  h.make_node("Sqrt", [p + "ve"], [p + "sd"]),
                  h.make_node("Div", [p + "d", p + "sd"], [p + "n"]),
                  h.make_node("Mul", [p + "n", "gamma"], [p + "s"]),
                  h.make_node("Add", [p + "s", "beta"], [p + "ln"]),
                  h.make_node("Div", [p + "ln", "sqrt2"], [p + "a"]),
                  h.make_node("Erf", [p + "a"], [p + "e"]),
                  h.make_node("Add", [p + "e", "one"], [p + "pe"]),
                  h.make_node("Mul", [p + "ln", p + "pe"], [p + "q"]),
                  h.make_node("Mul", [p + "q", "half"], [p + "gelu"])]
        x = p + "gelu"
    nodes[-1].output[0] = "y"
    io = [[1, 4, 4, 4]]
    g = h.make_graph(nodes, "fusion_blocks",
                     [h.make_tensor_value_info("x", TensorProto.FLOAT, io[0])],
                     [h.make_tensor_value_info("y", TensorProto.FLOAT, io[0])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)], ir_version=8)
