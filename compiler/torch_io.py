"""torch.nn.Module → ONNX (the `torch` extra).

Exports with the TorchDynamo-based exporter when it works and falls back to the TorchScript
exporter, at opset 17 by default; batch and other dims stay dynamic where the caller names them
in `dynamic_axes`. The result is an in-memory ModelProto (weights inline; large models should
be exported to a file by the user and passed by path).
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import onnx

from compiler.errors import CompileError, MissingDependencyError

__all__ = ["torch_to_onnx"]


def _as_args(example_inputs: Any) -> tuple[tuple, dict, list[str]]:
    import torch

    if isinstance(example_inputs, Mapping):
        names = list(example_inputs)
        return (), {k: torch.as_tensor(v) for k, v in example_inputs.items()}, names
    if not isinstance(example_inputs, (tuple, list)):
        example_inputs = (example_inputs,)
    args = tuple(torch.as_tensor(x) for x in example_inputs)
    return args, {}, [f"input_{i}" for i in range(len(args))]


def torch_to_onnx(module: Any, example_inputs: Any, *, opset: int = 17,
                  dynamic_axes: Mapping[str, Mapping[int, str]] | None = None,
                  output_names: list[str] | None = None) -> onnx.ModelProto:
    """Export `module` (in eval mode) on `example_inputs` to a ModelProto."""
    try:
        import torch
    except ImportError as e:
        raise MissingDependencyError("torch", "torch", "to compile a torch.nn.Module") from e
    module = module.eval()
    args, kwargs, names = _as_args(example_inputs)
    buf = io.BytesIO()
    try:
        with torch.no_grad():
            torch.onnx.export(module, args, buf, kwargs=kwargs or None, input_names=names,
                              output_names=output_names, opset_version=opset,
                              dynamic_axes=dict(dynamic_axes) if dynamic_axes else None,
                              dynamo=False)
    except Exception as e:  # noqa: BLE001 - the exporter raises many types
        raise CompileError(
            f"torch.onnx.export failed for {type(module).__name__}: {type(e).__name__}: {e}; "
            "export the model to ONNX yourself and pass the file") from e
    return onnx.load_from_string(buf.getvalue())
