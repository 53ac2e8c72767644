"""Small test utilities: build ONNX models by hand, run them in ONNX Runtime, compare outputs,
and run one pass on an imported graph."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper as h
from onnx import numpy_helper

import compiler
from compiler.ir import Graph
from passes.base import PassContext, PassResult, get_pass

__all__ = [
    "assert_same_outputs",
    "const",
    "make_model",
    "op_types",
    "random_feeds",
    "run_ort",
    "run_pass",
    "tensor_info",
]

DEFAULT_OPSET = 17


def tensor_info(name: str, dtype: int = onnx.TensorProto.FLOAT,
                shape: Sequence[int | str | None] | None = None) -> onnx.ValueInfoProto:
    """A typed graph input/output (`shape=None`: rank unknown)."""
    return h.make_tensor_value_info(name, dtype, shape)


def const(array: Any, name: str, dtype: Any = None) -> onnx.TensorProto:
    """An initializer TensorProto holding `array`."""
    return numpy_helper.from_array(np.asarray(array, dtype=dtype), name)


def make_model(nodes: Iterable[onnx.NodeProto], inputs: Sequence[onnx.ValueInfoProto],
               outputs: Sequence[onnx.ValueInfoProto],
               initializers: Sequence[onnx.TensorProto] = (), *, opset: int = DEFAULT_OPSET,
               extra_opsets: Mapping[str, int] | None = None,
               name: str = "g") -> onnx.ModelProto:
    """A ModelProto from nodes, typed I/O and initializers, at a given default opset."""
    graph = h.make_graph(list(nodes), name, list(inputs), list(outputs), list(initializers))
    opsets = [h.make_opsetid("", opset)]
    opsets += [h.make_opsetid(d, v) for d, v in (extra_opsets or {}).items()]
    model = h.make_model(graph, opset_imports=opsets)
    model.ir_version = min(model.ir_version, 10)  # what the installed ONNX Runtime reads
    return model


def _concrete(shape: Sequence[Any], dims: Mapping[str, int]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else dims.get(d, 2) if d else 2 for d in shape)


def random_feeds(model: onnx.ModelProto, seed: int = 0,
                 dims: Mapping[str, int] | None = None) -> dict[str, np.ndarray]:
    """Random inputs for every graph input that is not an initializer.

    Symbolic dims take their value from `dims` (default 2). Floats are standard normal, with
    signed zeros mixed in so tests see -0.0; integers are small; bools are random.
    """
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    feeds: dict[str, np.ndarray] = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = _concrete([d.dim_value if d.HasField("dim_value") else d.dim_param
                           for d in tt.shape.dim], dims or {})
        dt = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        if dt == np.bool_:
            arr = rng.random(shape) < 0.5
        elif np.issubdtype(dt, np.floating):
            arr = rng.standard_normal(shape).astype(dt)
            flat = arr.reshape(-1)
            flat[::5] = -0.0
            flat[1::7] = 0.0
        else:
            arr = rng.integers(-5, 6, shape).astype(dt)
        feeds[vi.name] = np.asarray(arr)
    return feeds


def run_ort(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run `model` on the CPU provider, all optimizations off; outputs by name."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, dict(feeds))))


def assert_same_outputs(before: onnx.ModelProto, after: onnx.ModelProto | Graph, *,
                        seeds: Sequence[int] = (0, 1), atol: float = 1e-6,
                        bitwise: bool = False,
                        dims: Mapping[str, int] | None = None) -> None:
    """Both models take the same inputs and give the same outputs (names, dtypes, values).

    `bitwise=True` compares raw bytes, so a -0.0 that became +0.0 counts as a difference.
    """
    if isinstance(after, Graph):
        after = compiler.export_onnx(after)
    assert [i.name for i in after.graph.input if i.name not in
            {t.name for t in after.graph.initializer}] == \
        [i.name for i in before.graph.input if i.name not in
         {t.name for t in before.graph.initializer}]
    for seed in seeds:
        feeds = random_feeds(before, seed, dims)
        ref, got = run_ort(before, feeds), run_ort(after, feeds)
        assert list(got) == list(ref), "graph output names changed"
        for name, r in ref.items():
            g = got[name]
            assert g.dtype == r.dtype and g.shape == r.shape, name
            if bitwise:
                assert g.tobytes() == r.tobytes(), f"{name} differs bit for bit"
            else:
                np.testing.assert_allclose(g, r, rtol=0, atol=atol, err_msg=name)


def op_types(graph: Graph) -> list[str]:
    """Op types of the graph's top-level nodes, in order."""
    return [n.op_type for n in graph]


def run_pass(graph: Graph, name: str, ctx: PassContext | None = None,
             **config: Any) -> PassResult:
    """Run the registered pass `name` (with config overrides) on `graph`."""
    return get_pass(name, **config).run(graph, ctx or PassContext())
