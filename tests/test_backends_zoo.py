"""Every backend that runs here, on the local test models: outputs within FP32 tolerance of
ONNX Runtime on the original model (max abs error <= 1e-3 x max|reference|, cosine >= 0.9999),
checked independently of compile()'s own verification."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import compiler
from compiler import zoo

MODELS = ["cnn", "decoder", pytest.param("siglip", marks=pytest.mark.slow)]


def _reference(name: str, feeds):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(str(zoo.get(name)), so, providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "tvm"])
@pytest.mark.parametrize("name", MODELS)
def test_backend_matches_onnxruntime(name, backend):
    feeds = zoo.example_inputs(name)
    # TVM imports static shapes (its frontend cannot follow shape arithmetic on dynamic dims)
    shapes = {k: v.shape for k, v in feeds.items()} if backend == "tvm" else None
    art = compiler.compile(zoo.get(name), backend=backend, example_inputs=feeds, shapes=shapes)
    assert art.verification["passed"] is True
    ref = _reference(name, feeds)
    got = art.run(feeds)
    assert set(got) == set(ref)
    for k, r in ref.items():
        g = got[k]
        assert g.shape == r.shape
        err = float(np.abs(g.astype(np.float64) - r).max())
        cos = float(np.dot(g.ravel(), r.ravel()) / (np.linalg.norm(g) * np.linalg.norm(r)))
        assert err <= 1e-3 * float(np.abs(r).max()), (k, err)
        assert cos >= 0.9999, (k, cos)
