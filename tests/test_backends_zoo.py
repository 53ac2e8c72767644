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


def test_bundle_run_py_uses_the_configured_optimization_level(tmp_path):
    """Regression: run.py hard-coded ORT_ENABLE_ALL, so a bundle compiled for graph
    optimisation "basic" (the search's fusion-off configuration) ran with "all"."""
    import subprocess
    import sys

    art = compiler.compile(zoo.get("tiny"), target="host", backend="onnxruntime",
                           options={"graph_optimization_level": "basic"},
                           out_dir=str(tmp_path / "b"))
    probe = ("import onnxruntime as ort, runpy\n"
             "orig = ort.InferenceSession\n"
             "def wrap(path, so=None, **kw):\n"
             "    print('LEVEL', so.graph_optimization_level)\n"
             "    return orig(path, so, **kw)\n"
             "ort.InferenceSession = wrap\n"
             "runpy.run_path('run.py', run_name='__main__')\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=art.path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "LEVEL GraphOptimizationLevel.ORT_ENABLE_BASIC" in out.stdout


def test_prediction_follows_onnx_runtime_own_optimization_level():
    """Regression: the prediction took "fusion off" from edgec's passes alone, so a model
    compiled without edgec fusion was costed as ORT at level "basic" (no NCHWc, no Conv+Relu
    fusion) while the bundle ran at "all". ORT's own level decides it."""
    def predicted(**options):
        return compiler.compile(zoo.get("cnn"), target="host", backend="onnxruntime",
                                pipeline="simplify", options=options).predicted["latency_ms"]

    assert predicted() < predicted(graph_optimization_level="basic")


def test_unknown_onnx_runtime_optimization_level_is_a_clear_error(tmp_path):
    """Regression: an unknown level ("fast") reached ORT's enum lookup as a KeyError in
    session_options, and run.py silently used "all"."""
    from compiler.errors import CompileError

    with pytest.raises(CompileError, match="graph_optimization_level 'fast'"):
        compiler.compile(zoo.get("tiny"), target="host", backend="onnxruntime",
                         options={"graph_optimization_level": "fast"},
                         out_dir=str(tmp_path / "b"))
    assert not (tmp_path / "b").exists()  # nothing half-written
