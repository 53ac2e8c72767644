"""Variants of zoo and corpus models as other tools write them: older/newer opsets, the way
paddle2onnx writes a graph, and the other torch exporter.

Why: a model's meaning does not depend on its opset or exporter, so edgec must compile every
form to the same numbers. Each transform keeps the function the graph computes:

- `opset<N>`: `onnx.version_converter.convert_version` to opset N (9, 11, 13, 17, 21). The
  converter has no adapter for some ops at some versions; then the variant does not exist and
  `variant` raises `VariantUnavailable` with the converter's reason.
- `paddle`: every initializer becomes a `Constant` node, every symbolic graph I/O dim becomes
  `dim_value: -1`, value_info is dropped, and each Reshape's constant target shape (and a 2-D
  Gemm/MatMul operand, which paddle2onnx flattens explicitly) is computed at run time as
  `Concat(Gather(Shape(x), [0]), Constant(rest))`, keeping dim 0 dynamic.
- `torchscript<N>` / `dynamo`: the zoo CNN exported by torch.onnx's TorchScript exporter
  (`dynamo=False`) at opset N (how a user gets an opset-9/11/13 CNN: onnx's converter has no
  down-adapter for BatchNormalization 15), or by its dynamo exporter (opset 18).

Variants are cached under `.cache/outside/variants/`, keyed by the source model's sha256, the
transform and the onnx/torch versions.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from compiler.zoo.outside import DEFAULT_CACHE_DIR

__all__ = ["OPSETS", "KINDS", "VariantUnavailable", "variant", "convert_opset", "paddle_style",
           "has_negative_dims"]

OPSETS = (9, 11, 13, 17, 21)
KINDS = (tuple(f"opset{v}" for v in OPSETS) + ("paddle", "dynamo")
         + tuple(f"torchscript{v}" for v in OPSETS if v <= 20))
_VERSION = "1"


class VariantUnavailable(RuntimeError):
    """The transform does not apply to this model (the reason is the message)."""


def convert_opset(model: onnx.ModelProto, version: int) -> onnx.ModelProto:
    """`model` at default opset `version`, checked by onnx's checker."""
    try:
        out = onnx.version_converter.convert_version(model, version)
        onnx.checker.check_model(out)
    except Exception as e:  # the converter raises RuntimeError/ValidationError/IndexError
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise VariantUnavailable(f"onnx.version_converter to opset {version}: {first}") from None
    out.ir_version = min(out.ir_version, 10)  # what the installed ONNX Runtime reads
    return out


def _computed_shape(nodes: list[onnx.NodeProto], x: str, rest: list[int], tag: str) -> str:
    """Append nodes computing `[x.shape[0], *rest]` and return the name of the result."""
    names = [f"{tag}_shape", f"{tag}_idx", f"{tag}_batch", f"{tag}_rest", f"{tag}_target"]
    nodes += [
        helper.make_node("Shape", [x], [names[0]], name=names[0]),
        helper.make_node("Constant", [], [names[1]], name=names[1],
                         value=numpy_helper.from_array(np.array([0], np.int64))),
        helper.make_node("Gather", [names[0], names[1]], [names[2]], name=names[2], axis=0),
        helper.make_node("Constant", [], [names[3]], name=names[3],
                         value=numpy_helper.from_array(np.array(rest, np.int64))),
        helper.make_node("Concat", [names[2], names[3]], [names[4]], name=names[4], axis=0),
    ]
    return names[4]


def _dims(model: onnx.ModelProto) -> dict[str, list[int | str | None]]:
    """Every value's dims as onnx shape inference sees them (ints, symbols or None)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:
        inferred = model
    g = inferred.graph
    out: dict[str, list[int | str | None]] = {}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        tt = vi.type.tensor_type
        if tt.HasField("shape"):
            out[vi.name] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                            for d in tt.shape.dim]
    return out


def paddle_style(model: onnx.ModelProto) -> onnx.ModelProto:
    """Rewrite `model` the way paddle2onnx writes graphs (see the module docstring)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {t.name: t for t in g.initializer}
    dims = _dims(model)
    nodes: list[onnx.NodeProto] = []
    for t in g.initializer:
        nodes.append(helper.make_node("Constant", [], [t.name], name=f"{t.name}_const", value=t))
    for i, n in enumerate(g.node):
        n = onnx.NodeProto.FromString(n.SerializeToString())
        x = dims.get(n.input[0]) if n.input else None
        if n.op_type == "Reshape" and n.input[1] in inits and x:
            target = numpy_helper.to_array(inits[n.input[1]]).astype(np.int64).tolist()
            # dim 0 kept as the input's own dim 0: only where that is what the target says
            if target and (target[0] == 0 or target[0] == x[0] != 0):
                n.input[1] = _computed_shape(nodes, n.input[0], [int(d) for d in target[1:]],
                                             f"p2o_reshape{i}")
        elif n.op_type in ("Gemm", "MatMul") and x is not None and len(x) == 2:
            target = _computed_shape(nodes, n.input[0], [-1], f"p2o_flatten{i}")
            flat = f"p2o_flatten{i}_out"
            nodes.append(helper.make_node("Reshape", [n.input[0], target], [flat],
                                          name=f"p2o_flatten{i}"))
            n.input[0] = flat
        nodes.append(n)
    del g.node[:]
    g.node.extend(nodes)
    del g.initializer[:]
    del g.value_info[:]
    inputs = [vi for vi in g.input if vi.name not in inits]
    del g.input[:]
    g.input.extend(inputs)
    for vi in list(g.input) + list(g.output):
        for d in vi.type.tensor_type.shape.dim:
            if not d.HasField("dim_value"):
                d.Clear()
                d.dim_value = -1  # not valid ONNX, but what paddle2onnx writes and runtimes read
    return out


def _torch_cnn(opset: int | None, path: Path) -> None:
    """The zoo CNN exported by torch: TorchScript at `opset`, or dynamo (opset None)."""
    import torch

    from compiler.zoo.builders import cnn_torch_module

    module = cnn_torch_module()
    x = torch.randn(2, 3, 64, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if opset is None:
            batch = torch.export.Dim("batch", min=1, max=64)
            torch.onnx.export(module, (x,), str(path), dynamo=True, opset_version=18,
                              input_names=["pixel_values"], output_names=["logits"],
                              dynamic_shapes=({0: batch},), external_data=False,
                              verbose=False)
        else:
            torch.onnx.export(module, (x,), str(path), dynamo=False, opset_version=opset,
                              input_names=["pixel_values"], output_names=["logits"],
                              dynamic_axes={"pixel_values": {0: "batch"},
                                            "logits": {0: "batch"}})


def _key(source: Path | None, kind: str) -> str:
    h = hashlib.sha256(f"{_VERSION} {kind} onnx {onnx.__version__}".encode())
    if source is not None:
        h.update(source.read_bytes())
    if source is None:
        for lib in ("torch", "onnxscript"):
            try:
                h.update(metadata.version(lib).encode())
            except metadata.PackageNotFoundError:
                pass
    return h.hexdigest()[:12]


def variant(source: str | os.PathLike | None, kind: str,
            cache: Path = DEFAULT_CACHE_DIR / "variants") -> Path:
    """The path of `source` (an .onnx path; None: the zoo CNN's exporter variants) made by
    `kind`, built once and cached. Raises VariantUnavailable when the transform cannot apply."""
    if kind not in KINDS:
        raise ValueError(f"unknown variant {kind!r}; kinds: {', '.join(KINDS)}")
    src = Path(source) if source is not None else None
    base = src.stem if src is not None else "zoo_cnn"
    cache = Path(cache)
    cache.mkdir(parents=True, exist_ok=True)
    key = _key(src, kind)
    dest = cache / f"{base}-{kind}-{key}.onnx"
    failed = dest.with_suffix(".failed")
    if dest.exists():
        return dest
    if failed.exists():
        raise VariantUnavailable(failed.read_text())
    fd, tmp = tempfile.mkstemp(dir=cache, suffix=".onnx.tmp")
    os.close(fd)
    try:
        if src is None:
            if not (kind == "dynamo" or kind.startswith("torchscript")):
                raise ValueError(f"variant {kind!r} needs a source model")
            _torch_cnn(None if kind == "dynamo" else int(kind[len("torchscript"):]), Path(tmp))
            model = onnx.load(tmp)  # inline any external data the exporter wrote
        else:
            proto = onnx.load(str(src))
            if kind == "paddle":
                model = paddle_style(proto)
            else:
                model = convert_opset(proto, int(kind[len("opset"):]))
        model.ir_version = min(model.ir_version, 10)
        onnx.save_model(model, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except VariantUnavailable as e:
        failed.write_text(str(e))
        raise
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def has_negative_dims(model: onnx.ModelProto) -> bool:
    """Whether a graph I/O declares a `dim_value` below zero (paddle2onnx's dynamic dims)."""
    return any(d.HasField("dim_value") and d.dim_value < 0
               for vi in list(model.graph.input) + list(model.graph.output)
               for d in vi.type.tensor_type.shape.dim)

