"""Checks of what the user hands compile(), before anything is built, and the sizes of the
model's symbolic dims that the search and the prediction cost.

Why: each of these, left unchecked, surfaced later as a runtime's raw error (an input dtype no
runtime can name, a graph output redeclaring an input, calibration samples of the wrong shape
fed to ONNX Runtime) or as a prediction at sizes nobody chose (every dynamic dim bound to 1).
Each check raises a CompileError subclass naming the input and what to do.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from compiler.errors import CompileError, InvalidModelError
from compiler.ir import Graph
from compiler.verify import first_feeds, real_inputs

__all__ = ["check_calibration", "check_shapes", "check_signature", "dim_bindings"]


def check_signature(graph: Graph, proto: onnx.ModelProto | None) -> None:
    """Input and output types a runtime could not even name, and a graph output that is also
    an input but declared with another type, are the model's problem."""
    for v in [*graph.inputs, *graph.outputs]:
        if v.dtype is not None and v.dtype not in onnx.TensorProto.DataType.values():
            raise InvalidModelError(
                f"{'input' if v in graph.inputs else 'output'} {v.name!r} has element type "
                f"{v.dtype}, which is not an ONNX TensorProto data type; fix the model")
    if proto is None:
        return
    inputs = {vi.name: vi.type for vi in proto.graph.input}
    for vi in proto.graph.output:
        if vi.name in inputs and vi.type != inputs[vi.name]:
            raise InvalidModelError(
                f"graph output {vi.name!r} is the input of that name but declares another "
                "type or shape; fix the output's declaration")


def check_shapes(graph: Graph, shapes: Mapping[str, tuple[int, ...]]) -> None:
    names = {v.name: v for v in graph.inputs}
    for k, dims in shapes.items():
        v = names.get(k)
        if v is None:
            raise CompileError(
                f"shape given for {k!r}, which is not a model input; inputs: "
                f"{', '.join(names)}")
        if v.shape is not None and len(v.shape) != len(dims):
            raise CompileError(f"input {k!r} has rank {len(v.shape)}, shape {dims} has "
                               f"rank {len(dims)}")
        for i, (have, want) in enumerate(zip(v.shape or (), dims)):
            if isinstance(have, int) and have != want:
                raise CompileError(f"input {k!r} dim {i} is fixed at {have}, not {want}")


def check_calibration(calibration: Any, graph: Graph) -> None:
    """The first calibration sample fits the model's inputs: names, ranks, fixed dims."""
    sample = first_feeds(calibration) if isinstance(calibration, (list, tuple)) else None
    if not sample:
        return
    for v in real_inputs(graph):
        if v.name not in sample:
            raise CompileError(f"calibration sample 0 has no input {v.name!r}; it holds "
                               f"{', '.join(sample)}")
        got = np.shape(sample[v.name])
        if v.shape is None:
            continue
        if len(got) != len(v.shape) or any(isinstance(d, int) and d != n
                                          for d, n in zip(v.shape, got)):
            raise CompileError(f"calibration sample 0's {v.name!r} has shape {list(got)}; the "
                               f"model takes {list(v.shape)}")


def dim_bindings(graph: Graph, shapes, plan) -> tuple[dict[str, int], str]:
    """Sizes for the symbolic input dims the search and the prediction cost, and a line for
    the prediction's assumptions saying where they come from."""
    from compiler.cost.model import bindings_from_shapes

    bound = bindings_from_shapes(graph, shapes)
    unbound = sorted({d for v in real_inputs(graph) for d in v.shape or ()
                      if isinstance(d, str) and d not in bound})
    if not unbound:
        return bound, ("input sizes: " + ("from shapes=" if bound else "all static"))
    if plan is not None and plan.feeds is not None:
        found = {k: n for k, n in plan.bindings(graph).items() if k in unbound}
        bound.update(found)
        if found:
            return bound, (f"input sizes: dims {found} from the inputs verification used "
                           f"({plan.origin}); pass shapes= / --shape for the sizes you deploy")
    left = [d for d in unbound if d not in bound]
    return bound, (f"input sizes: dims {left} unbound and counted as 1, so the prediction is a "
                   "lower bound; pass shapes= / --shape NAME=1x3x224x224 for real sizes")


