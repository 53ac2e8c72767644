"""Builders of the model zoo (see `compiler.zoo`): each writes one model into an empty folder.

Why a separate module: `compiler.zoo` is the small public face (names, cache, example feeds);
this file holds the recipes. torch and transformers are optional, so they are imported inside
the torch builders only.

Torch models are exported with the TorchScript exporter (`dynamo=False`). The torch.export-based
exporter of torch 2.13 emits opset >= 18 only, its down-conversion to opset 17 fails on
ReduceMean, and it folds BatchNormalization into Conv; the TorchScript exporter gives opset 17
and, with constant folding off, keeps BatchNormalization in the CNN.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

__all__ = [
    "OPSET",
    "IR_VERSION",
    "DecoderSpec",
    "DECODER",
    "CNN_CLASSES",
    "build_cnn",
    "build_siglip",
    "build_decoder",
    "build_control_flow",
    "build_external_data",
    "build_tiny",
    "cnn_torch_module",
    "siglip_torch_module",
    "decoder_torch_module",
    "decoder_inputs",
]

OPSET = 17
IR_VERSION = 8  # the IR version that came with opset 17; older runtimes read it
CNN_CLASSES = 10
MODEL_FILE = "model.onnx"


@dataclass(frozen=True)
class DecoderSpec:
    """Shape facts of the zoo's Llama-style decoder, for building feeds and checks."""

    num_layers: int = 4
    hidden_size: int = 256
    num_heads: int = 4
    num_kv_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 688
    vocab_size: int = 1000

    def input_names(self) -> list[str]:
        kv = ("key", "value")
        past = [f"past_key_values.{i}.{k}" for i in range(self.num_layers) for k in kv]
        return ["input_ids", "attention_mask", "position_ids", *past]

    def output_names(self) -> list[str]:
        present = [f"present.{i}.{k}" for i in range(self.num_layers) for k in ("key", "value")]
        return ["logits", *present]


DECODER = DecoderSpec()


def decoder_inputs(
    batch: int = 1, seq_len: int = 3, past_len: int = 5, seed: int = 0
) -> dict[str, np.ndarray]:
    """Feeds for the decoder: `seq_len` new tokens after a cache of `past_len` (0 allowed)."""
    spec, rng = DECODER, np.random.default_rng(seed)
    pos = np.arange(past_len, past_len + seq_len, dtype=np.int64)
    feeds = {
        "input_ids": rng.integers(0, spec.vocab_size, (batch, seq_len), dtype=np.int64),
        "attention_mask": np.ones((batch, past_len + seq_len), np.int64),
        "position_ids": np.tile(pos, (batch, 1)),
    }
    kv_shape = (batch, spec.num_kv_heads, past_len, spec.head_dim)
    for name in spec.input_names()[3:]:
        feeds[name] = rng.standard_normal(kv_shape).astype(np.float32)
    return feeds


# --------------------------------------------------------------------------- torch helpers


def _quiet_export(module: Any, args: tuple, path: Path, **kwargs: Any) -> None:
    """TorchScript export at opset 17, silencing the deprecation and tracer warnings."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, args, str(path), dynamo=False, opset_version=OPSET, **kwargs)


def _inline_identity_initializers(model: onnx.ModelProto) -> None:
    """Replace `Identity(initializer)` nodes (the exporter's de-duplication of equal weights)
    by a copy of the initializer, so every weight is a plain initializer."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    keep = []
    for node in graph.node:
        src = node.input[0] if node.op_type == "Identity" else None
        if src in inits and node.output[0] not in outputs:
            copy = TensorProto()
            copy.CopyFrom(inits[src])
            copy.name = node.output[0]
            graph.initializer.append(copy)
        else:
            keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)


def _set_dims(model: onnx.ModelProto, name: str, dims: list[int | str]) -> None:
    """Overwrite the declared shape of graph input/output `name` (exporters invent dim names)."""
    for vi in list(model.graph.input) + list(model.graph.output):
        if vi.name == name:
            shape = vi.type.tensor_type.shape
            del shape.dim[:]
            for d in dims:
                dim = shape.dim.add()
                if isinstance(d, str):
                    dim.dim_param = d
                else:
                    dim.dim_value = d
            return
    raise KeyError(name)


def _finish_torch_export(raw: Path, out: Path, doc: str, dims: dict[str, list]) -> Path:
    model = onnx.load(str(raw))
    _inline_identity_initializers(model)
    for name, d in dims.items():
        _set_dims(model, name, d)
    model.doc_string = doc
    model.producer_name = "edgec.zoo"
    raw.unlink()
    onnx.save_model(model, str(out))
    return out


# --------------------------------------------------------------------------- cnn


def cnn_torch_module() -> Any:
    """The zoo CNN as an eval-mode torch module (seed 0, non-trivial BatchNorm statistics)."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int = 1, groups: int = 1) -> None:
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, 3, stride, 1, groups=groups, bias=False)
            self.bn = nn.BatchNorm2d(cout)
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.bn(self.conv(x)))

    class SmallCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = Block(3, 32, 2)
            self.b1 = Block(32, 64, 2)
            self.b2 = Block(64, 64)  # residual
            self.dw = Block(64, 64, groups=64)  # depthwise
            self.b3 = Block(64, 128, 2)
            self.b4 = Block(128, 128)
            self.b5 = Block(128, 256, 2)
            self.fc = nn.Linear(256, CNN_CLASSES)

        def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
            x = self.b1(self.stem(pixel_values))
            x = x + self.b2(x)
            x = self.b5(self.b4(self.b3(self.dw(x))))
            return self.fc(x.mean(dim=(2, 3)))

    torch.manual_seed(0)
    model = SmallCNN().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


def build_cnn(out_dir: Path) -> Path:
    import torch

    model = cnn_torch_module()
    raw = out_dir / "raw.onnx"
    _quiet_export(
        model,
        (torch.randn(2, 3, 64, 64),),
        raw,
        input_names=["pixel_values"],
        output_names=["logits"],
        dynamic_axes={
            "pixel_values": {0: "batch", 2: "height", 3: "width"},
            "logits": {0: "batch"},
        },
        do_constant_folding=False,
        training=torch.onnx.TrainingMode.EVAL,
    )
    doc = "edgec zoo cnn: conv-bn-relu blocks, residual add, depthwise conv, avg pool, linear"
    return _finish_torch_export(raw, out_dir / MODEL_FILE, doc, {})


# --------------------------------------------------------------------------- siglip


def siglip_torch_module() -> Any:
    """SigLIP-B/16 vision encoder at 224 (transformers defaults), random weights, eager
    attention, wrapped to return (last_hidden_state, pooler_output)."""
    import torch
    from transformers import SiglipVisionConfig, SiglipVisionModel

    class Wrapper(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.inner(pixel_values=pixel_values)
            return out.last_hidden_state, out.pooler_output

    torch.manual_seed(0)
    config = SiglipVisionConfig()
    config._attn_implementation = "eager"
    return Wrapper(SiglipVisionModel(config)).eval()


def build_siglip(out_dir: Path) -> Path:
    import torch

    model = siglip_torch_module()
    cfg = model.inner.config
    tokens = (cfg.image_size // cfg.patch_size) ** 2
    raw = out_dir / "raw.onnx"
    outs = ["last_hidden_state", "pooler_output"]
    with torch.no_grad():
        _quiet_export(
            model,
            (torch.randn(2, 3, cfg.image_size, cfg.image_size),),
            raw,
            input_names=["pixel_values"],
            output_names=outs,
            dynamic_axes={n: {0: "batch"} for n in ["pixel_values", *outs]},
        )
    doc = "edgec zoo siglip: SigLIP-B/16 vision encoder (224px), random weights, eager attention"
    dims = {
        "last_hidden_state": ["batch", tokens, cfg.hidden_size],
        "pooler_output": ["batch", cfg.hidden_size],
    }
    return _finish_torch_export(raw, out_dir / MODEL_FILE, doc, dims)


# --------------------------------------------------------------------------- decoder


def decoder_torch_module() -> Any:
    """Llama-style decoder (GQA, eager attention, random weights) with a flat-tensor KV cache:
    forward(input_ids, attention_mask, position_ids, *past) -> (logits, *present)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from transformers.cache_utils import DynamicCache

    spec = DECODER

    class Wrapper(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids: Any, attention_mask: Any, position_ids: Any, *past: Any):
            cache = DynamicCache(config=self.inner.config)
            for i in range(spec.num_layers):
                cache.update(past[2 * i], past[2 * i + 1], i)
            out = self.inner(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                past_key_values=cache,
                use_cache=True,
            )
            present = []
            for layer in out.past_key_values.layers:
                present += [layer.keys, layer.values]
            return (out.logits, *present)

    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_kv_heads,
        head_dim=spec.head_dim,
        intermediate_size=spec.intermediate_size,
        vocab_size=spec.vocab_size,
        max_position_embeddings=2048,
    )
    config._attn_implementation = "eager"
    return Wrapper(LlamaForCausalLM(config)).eval()


def build_decoder(out_dir: Path) -> Path:
    import torch

    spec = DECODER
    model = decoder_torch_module()
    # Traced with past > 0 and seq > 1 so that no length is specialised; runs with past = 0 too.
    feeds = decoder_inputs(batch=2, seq_len=3, past_len=5)
    names_in, names_out = spec.input_names(), spec.output_names()
    dyn: dict[str, dict[int, str]] = {
        "input_ids": {0: "batch", 1: "sequence_length"},
        "attention_mask": {0: "batch", 1: "total_sequence_length"},
        "position_ids": {0: "batch", 1: "sequence_length"},
        "logits": {0: "batch", 1: "sequence_length"},
    }
    dyn.update({n: {0: "batch", 2: "past_sequence_length"} for n in names_in[3:]})
    dyn.update({n: {0: "batch", 2: "total_sequence_length"} for n in names_out[1:]})
    raw = out_dir / "raw.onnx"
    with torch.no_grad():
        args = tuple(torch.from_numpy(feeds[n]) for n in names_in)
        _quiet_export(
            model, args, raw, input_names=names_in, output_names=names_out, dynamic_axes=dyn
        )
    doc = "edgec zoo decoder: Llama-style, 4 layers, GQA 4q/2kv heads, KV cache in/out"
    return _finish_torch_export(raw, out_dir / MODEL_FILE, doc, {})


# --------------------------------------------------------------------------- hand-built


def _save(graph: onnx.GraphProto, out: Path, doc: str, **save_kwargs: Any) -> Path:
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="edgec.zoo",
        doc_string=doc,
    )
    onnx.save_model(model, str(out), **save_kwargs)
    return out


def _f32(shape: list[Any], name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def build_tiny(out_dir: Path) -> Path:
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 4)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["add"]),
        helper.make_node("Relu", ["add"], ["relu"]),
        helper.make_node("Softmax", ["relu"], ["y"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [_f32(["batch", 8], "x")], [_f32(["batch", 4], "y")], [w, b]
    )
    return _save(graph, out_dir / MODEL_FILE, "edgec zoo tiny: softmax(relu(x @ w + b))")


def build_control_flow(out_dir: Path) -> Path:
    """y, trace = Loop_3(If(sum(x) > 0, x * 2, x - 1)); each step v += x, trace[i] = v * i."""
    consts = [
        numpy_helper.from_array(np.array(2.0, np.float32), "two"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        numpy_helper.from_array(np.array(3, np.int64), "trip_count"),
        numpy_helper.from_array(np.array(True), "keep_going"),
    ]
    then_g = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["then_out"])],
        "then",
        [],
        [_f32([2, 3], "then_out")],
    )
    else_g = helper.make_graph(
        [helper.make_node("Sub", ["x", "one"], ["else_out"])],
        "else",
        [],
        [_f32([2, 3], "else_out")],
    )
    body = helper.make_graph(
        [
            helper.make_node("Add", ["v_in", "x"], ["v_out"]),  # x is from the outer scope
            helper.make_node("Cast", ["iter"], ["iter_f"], to=TensorProto.FLOAT),
            helper.make_node("Mul", ["v_out", "iter_f"], ["scan_out"]),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("iter", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            _f32([2, 3], "v_in"),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            _f32([2, 3], "v_out"),
            _f32([2, 3], "scan_out"),
        ],
    )
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["positive"]),
        helper.make_node("If", ["positive"], ["h"], then_branch=then_g, else_branch=else_g),
        helper.make_node("Loop", ["trip_count", "keep_going", "h"], ["y", "trace"], body=body),
    ]
    graph = helper.make_graph(
        nodes,
        "control_flow",
        [_f32([2, 3], "x")],
        [_f32([2, 3], "y"), _f32([3, 2, 3], "trace")],
        consts,
    )
    return _save(graph, out_dir / MODEL_FILE, "edgec zoo control_flow: If and Loop subgraphs")


EXTERNAL_MLP_DIMS = (256, 1024, 1024, 10)


def build_external_data(out_dir: Path) -> Path:
    """A 3-layer MLP (~5 MB of weights) saved as model.onnx + model.data in its own folder."""
    rng = np.random.default_rng(0)
    dims = EXTERNAL_MLP_DIMS
    inits, nodes, cur = [], [], "x"
    for i, (din, dout) in enumerate(zip(dims[:-1], dims[1:])):
        w = (rng.standard_normal((din, dout)) / np.sqrt(din)).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"fc{i}.weight"),
            numpy_helper.from_array(
                rng.standard_normal(dout).astype(np.float32) * 0.1, f"fc{i}.bias"
            ),
        ]
        nodes += [
            helper.make_node("MatMul", [cur, f"fc{i}.weight"], [f"fc{i}.mm"]),
            helper.make_node("Add", [f"fc{i}.mm", f"fc{i}.bias"], [f"fc{i}.out"]),
        ]
        cur = f"fc{i}.out"
        if i < len(dims) - 2:
            nodes.append(helper.make_node("Relu", [cur], [f"relu{i}"]))
            cur = f"relu{i}"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        nodes,
        "external_data",
        [_f32(["batch", dims[0]], "x")],
        [_f32(["batch", dims[-1]], "y")],
        inits,
    )
    return _save(
        graph,
        out_dir / MODEL_FILE,
        "edgec zoo external_data: MLP with weights in model.data",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="model.data",
        size_threshold=1024,
    )
