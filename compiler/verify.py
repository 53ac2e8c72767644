"""Numerics of a compiled artifact against the reference (ONNX Runtime on the original model).

Inputs come from the user's example inputs, else the first calibration sample, else they are
generated from the input signature with a fixed seed. Symbolic dims are bound from those
inputs, from `shapes=`, or, failing both, from candidate sizes the reference model accepts
(a conv net needs real image sizes, not 1). When nothing works, verification is skipped with a
reason naming the unbound dims; an unbound dim never fails a compile by itself.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from compiler.ir import Graph, Value, dtype_to_numpy

__all__ = ["VerifyReport", "Tolerance", "TOLERANCES", "compare", "make_inputs", "unbound_dims",
           "reference_outputs"]


@dataclass(frozen=True)
class Tolerance:
    """Pass if max|err| <= rel * max|ref| and cosine >= min_cosine, for every output."""

    rel: float = 1e-3
    min_cosine: float = 0.9999


TOLERANCES = {
    "fp32": Tolerance(1e-3, 0.9999),
    "fp16": Tolerance(2e-2, 0.999),
    "bf16": Tolerance(5e-2, 0.998),
    "int8": Tolerance(0.25, 0.99),
    "mixed": Tolerance(0.25, 0.99),
    "int4-weight": Tolerance(0.3, 0.98),
    "fixed": Tolerance(0.25, 0.99),  # per-layer ap_fixed (FPGA), against the FP32 original
}


@dataclass
class VerifyReport:
    passed: bool | None
    max_abs_error: float = 0.0
    max_abs_reference: float = 0.0
    cosine: float = 1.0
    tolerance: dict[str, float] = field(default_factory=dict)
    outputs: dict[str, dict[str, float]] = field(default_factory=dict)
    inputs_from: str = ""
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    skipped: str = ""
    runner: str = ""  # what produced the compared outputs

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = a.astype(np.float64).ravel()
    b = b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def compare(reference: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray],
            tol: Tolerance = TOLERANCES["fp32"]) -> VerifyReport:
    """Per-output and worst-case error statistics, and pass/fail against `tol`."""
    rep = VerifyReport(passed=True, tolerance=asdict(tol))
    cos_min = 1.0
    for name, ref in reference.items():
        if name not in actual:
            rep.passed = False
            rep.outputs[name] = {"missing": 1.0}
            continue
        got = np.asarray(actual[name])
        ref = np.asarray(ref)
        if got.shape != ref.shape:
            rep.passed = False
            rep.outputs[name] = {"shape_mismatch": 1.0}
            continue
        if ref.dtype == bool or np.issubdtype(ref.dtype, np.integer):
            err = float(np.max(np.abs(ref.astype(np.int64) - got.astype(np.int64)), initial=0))
            ok = err == 0
            cos = 1.0 if ok else _cosine(ref, got)
            mref = float(np.max(np.abs(ref), initial=0))
        else:
            diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
            err = float(np.nanmax(diff, initial=0.0)) if diff.size else 0.0
            mref = float(np.max(np.abs(ref), initial=0.0)) if ref.size else 0.0
            cos = _cosine(ref, got) if ref.size else 1.0
            finite = bool(np.isfinite(got).all() == np.isfinite(ref).all())
            ok = finite and err <= tol.rel * max(mref, 1e-12) and cos >= tol.min_cosine
        rep.outputs[name] = {"max_abs_error": err, "max_abs_reference": mref, "cosine": cos}
        rep.passed = bool(rep.passed and ok)
        if err > rep.max_abs_error:
            rep.max_abs_error, rep.max_abs_reference = err, mref
        rep.max_abs_reference = max(rep.max_abs_reference, mref)
        cos_min = min(cos_min, cos)
    rep.cosine = cos_min
    return rep


# ---------------------------------------------------------------------------------------------
# inputs
def real_inputs(graph: Graph) -> list[Value]:
    """Graph inputs the caller must feed (initializers listed as inputs are optional)."""
    return [v for v in graph.inputs if v.const is None]


def unbound_dims(graph: Graph, shapes: Mapping[str, tuple[int, ...]] | None = None) -> list[str]:
    shapes = shapes or {}
    out = []
    for v in real_inputs(graph):
        if v.name in shapes or v.shape is None:
            continue
        out += [f"{v.name}[{i}]={d}" for i, d in enumerate(v.shape) if not isinstance(d, int)]
    return out


def _vocab_bound(v: Value) -> int | None:
    """For integer inputs used as Gather indices into a constant table: the table's size."""
    for node, i in v.uses:
        if node.op_type == "Gather" and i == 1:
            table = node.inputs[0]
            if table is not None and table.shape:
                axis = node.attr("axis", 0)
                dim = table.shape[axis]
                if isinstance(dim, int):
                    return dim
    return None


def _candidates(graph: Graph, shapes: Mapping[str, tuple[int, ...]]) -> list[dict[str, int]]:
    """Bindings for symbolic dims to try, most plausible first."""
    syms: dict[str, list[int]] = {}
    for v in real_inputs(graph):
        if v.name in shapes or not v.shape:
            continue
        for i, d in enumerate(v.shape):
            if isinstance(d, int):
                continue
            key = d if isinstance(d, str) else f"{v.name}#{i}"
            low = key.lower()
            if i == 0 and ("batch" in low or v.rank and v.rank > 1) or low in ("n", "b"):
                opts = [1, 2]
            elif v.rank == 4 and i >= 2 or any(s in low for s in ("height", "width", "h", "w")):
                opts = [224, 64, 32]
            elif "past" in low:
                opts = [4, 0, 1]
            else:
                opts = [8, 16, 1]
            syms.setdefault(key, opts)
    if not syms:
        return [{}]
    keys = list(syms)
    combos = []
    for k in range(max(len(o) for o in syms.values())):
        combos.append({key: syms[key][min(k, len(syms[key]) - 1)] for key in keys})
    return combos[:4]


def _shape_for(v: Value, binding: Mapping[str, int], shapes) -> tuple[int, ...]:
    if v.name in shapes:
        return tuple(shapes[v.name])
    out = []
    for i, d in enumerate(v.shape or ()):
        if isinstance(d, int):
            out.append(d)
        else:
            key = d if isinstance(d, str) else f"{v.name}#{i}"
            out.append(binding[key])
    return tuple(out)


def _tie_total_length(graph: Graph, binding: dict[str, int]) -> dict[str, int]:
    """attention_mask's total length = past + current, a relation no dim name states."""
    b = dict(binding)
    for key in list(b):
        low = key.lower()
        if "total" in low:
            past = next((b[k] for k in b if "past" in k.lower()), 0)
            cur = next((b[k] for k in b if "sequence" in k.lower() and "past" not in k.lower()
                        and "total" not in k.lower()), None)
            if cur is not None:
                b[key] = past + cur
    return b


def _data(v: Value, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    dt = dtype_to_numpy(v.dtype or onnx.TensorProto.FLOAT)
    low = v.name.lower()
    if dt == np.bool_:
        return rng.random(shape) > 0.5
    if np.issubdtype(dt, np.integer):
        if "mask" in low:
            return np.ones(shape, dt)
        if "position" in low and shape:
            return np.broadcast_to(np.arange(shape[-1], dtype=dt), shape).copy()
        hi = _vocab_bound(v) or 2
        return rng.integers(0, hi, size=shape).astype(dt)
    return rng.standard_normal(shape).astype(dt)


def make_inputs(graph: Graph, *, shapes: Mapping[str, tuple[int, ...]] | None = None,
                seed: int = 0, accept=None) -> tuple[dict[str, np.ndarray] | None, str]:
    """Seeded random feeds for `graph`'s inputs; `accept(feeds) -> bool` checks a binding.

    Returns (feeds, description) or (None, reason) when no binding is accepted.
    """
    shapes = dict(shapes or {})
    tried = []
    for binding in _candidates(graph, shapes):
        binding = _tie_total_length(graph, binding)
        rng = np.random.default_rng(seed)
        feeds = {v.name: _data(v, _shape_for(v, binding, shapes), rng)
                 for v in real_inputs(graph)}
        if accept is None or accept(feeds):
            desc = f"generated (seed {seed})"
            if binding:
                desc += ", dims " + ", ".join(f"{k}={n}" for k, n in binding.items())
            return feeds, desc
        tried.append(binding)
    dims = ", ".join(unbound_dims(graph, shapes))
    return None, (f"no input sizes the model accepts were found for unbound dims {dims} "
                  f"(tried {tried}); pass shapes= or --shape NAME=1x3x224x224")


def reference_outputs(model_path_or_proto: str | onnx.ModelProto,
                      feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime (CPU, all optimizations off) on the original model."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    so.log_severity_level = 3
    src = model_path_or_proto
    if isinstance(src, onnx.ModelProto):
        src = src.SerializeToString()
    sess = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    wanted = {i.name for i in sess.get_inputs()}
    return dict(zip(names, sess.run(None, {k: v for k, v in feeds.items() if k in wanted})))


def first_feeds(source: Any) -> dict[str, np.ndarray] | None:
    """The first sample of example inputs / calibration data, if any."""
    if source is None:
        return None
    if isinstance(source, Mapping):
        return {k: np.asarray(v) for k, v in source.items()}
    it = iter(source)
    for sample in itertools.islice(it, 1):
        return {k: np.asarray(v) for k, v in sample.items()}
    return None
