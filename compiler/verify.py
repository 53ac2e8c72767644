"""Numerics of a compiled artifact against the reference (ONNX Runtime on the original model).

Inputs come from the user's example inputs, else the first calibration sample, else they are
generated from the input signature with a fixed seed. Symbolic dims are bound from those
inputs, from `shapes=`, or, failing both, from candidate sizes the reference model accepts
(a conv net needs real image sizes, not 1). When nothing works, verification is skipped with a
reason naming the unbound dims; an unbound dim never fails a compile by itself. Generated inputs
are sized before they are allocated (compiler.resources), so a declared dim of 2^31-1 is a
ResourceError, not a MemoryError.

The reference is loaded once (`Reference`): a model ONNX Runtime refuses is the model's problem
(RuntimeRefusedError with ONNX Runtime's reason), and the probes of candidate input sizes run
with ONNX Runtime's log silenced, so its error lines never reach the user's terminal.

Tolerance. An output passes when max|err| <= rel * S and, where the signal stands above the
noise floor, cosine >= min_cosine. S is the scale the output is computed at: its own largest
magnitude, or the range of the bounded function that produces it (Sigmoid, Tanh, Softmax,
HardSigmoid...: 1), whichever is larger. Runtimes compute such functions to an absolute accuracy
of a few ulps of that range, not of the value: a sigmoid of -16 (1.1e-7) is off by ~1e-7 in a
correct fp32 kernel, i.e. by 70% of itself. Judged against its own magnitude (or by cosine,
which measures the direction of a vector of noise) a correct build fails; judged against S it
passes, while an error of rel * S (1e-3 for fp32 on a probability) still fails. When max|ref|
is below rel * S the output is zero at the computing scale and its cosine is not judged.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from compiler.errors import RuntimeRefusedError, runtime_reason
from compiler.ir import Graph, Value, dtype_to_numpy
from compiler.resources import check_allocation, nbytes

__all__ = ["VerifyReport", "VerifyPlan", "Tolerance", "TOLERANCES", "Reference", "compare",
           "make_inputs", "output_scales", "plan", "unbound_dims", "reference_outputs"]


@dataclass(frozen=True)
class Tolerance:
    """Pass if max|err| <= rel * S (S: the output's computing scale, see the module docstring)
    and, above the noise floor, cosine >= min_cosine, for every output."""

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


# Ops whose output range is bounded by 1 whatever their input: kernels compute them to an
# absolute accuracy of that range. Views between them and a graph output keep the scale.
BOUNDED_OPS = frozenset({"Sigmoid", "HardSigmoid", "Tanh", "Softmax", "Softsign", "Erf", "Cos",
                         "Sin", "HardSwish"})
_VIEWS = frozenset({"Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Identity",
                    "Slice", "Gather", "Concat", "Split", "Expand", "Cast"})


def output_scales(graph: Graph) -> dict[str, float]:
    """Per output of `graph`: the range of the bounded function that produces it (through
    views), for outputs that come from one; see the module docstring."""
    out: dict[str, float] = {}
    for v in graph.outputs:
        node = v.producer
        while node is not None and node.op_type in _VIEWS and node.inputs and \
                node.inputs[0] is not None:
            node = node.inputs[0].producer
        if node is not None and node.op_type in BOUNDED_OPS:
            out[v.name] = 1.0
    return out


def compare(reference: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray],
            tol: Tolerance = TOLERANCES["fp32"], scales: Mapping[str, float] | None = None
            ) -> VerifyReport:
    """Per-output and worst-case error statistics, and pass/fail against `tol`; `scales`: the
    computing scale of outputs produced by bounded functions (`output_scales`)."""
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
        finite = True
        if ref.dtype == bool or np.issubdtype(ref.dtype, np.integer):
            err = float(np.max(np.abs(ref.astype(np.int64) - got.astype(np.int64)), initial=0))
            ok = err == 0
            cos = 1.0 if ok else _cosine(ref, got)
            mref = float(np.max(np.abs(ref), initial=0))
        else:
            # NaN/Inf must sit where the reference has them; the rest is compared by value
            fin_ref, fin_got = np.isfinite(ref), np.isfinite(got)
            same_inf = np.array_equal(np.isposinf(ref), np.isposinf(got)) and \
                np.array_equal(np.isneginf(ref), np.isneginf(got))
            finite = bool(np.array_equal(fin_ref, fin_got) and same_inf)
            r = ref[fin_ref & fin_got].astype(np.float64)
            g = got[fin_ref & fin_got].astype(np.float64)
            err = float(np.max(np.abs(r - g), initial=0.0))
            mref = float(np.max(np.abs(r), initial=0.0))
            cos = _cosine(r, g) if r.size else 1.0
            scale = max(mref, float((scales or {}).get(name, 0.0)), 1e-12)
            above_floor = mref > tol.rel * scale
            ok = finite and err <= tol.rel * scale and (cos >= tol.min_cosine or not above_floor)
        rep.outputs[name] = {"max_abs_error": err, "max_abs_reference": mref, "cosine": cos}
        if not finite:
            rep.outputs[name]["nonfinite_mismatch"] = 1.0
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


def _feed_bytes(graph: Graph, binding: Mapping[str, int], shapes) -> int:
    """Bytes the feeds of `binding` would take, with the float64 draw they are made from."""
    total = 0
    for v in real_inputs(graph):
        dt = np.dtype(dtype_to_numpy(v.dtype or onnx.TensorProto.FLOAT))
        shape = _shape_for(v, binding, shapes)
        total += nbytes(shape, dt) + nbytes(shape, np.float64)
    return total


def make_inputs(graph: Graph, *, shapes: Mapping[str, tuple[int, ...]] | None = None,
                seed: int = 0, accept=None, options: Mapping[str, Any] | None = None
                ) -> tuple[dict[str, np.ndarray] | None, str]:
    """Seeded random feeds for `graph`'s inputs; `accept(feeds) -> bool` checks a binding.

    Returns (feeds, description) or (None, reason) when no binding is accepted. Raises
    ResourceError when the feeds would not fit in memory (`options`: the memory cap).
    """
    shapes = dict(shapes or {})
    tried = []
    for binding in _candidates(graph, shapes):
        binding = _tie_total_length(graph, binding)
        sizes = ", ".join(f"{v.name}{list(_shape_for(v, binding, shapes))}"
                          for v in real_inputs(graph))
        check_allocation(_feed_bytes(graph, binding, shapes), f"verification inputs ({sizes})",
                         options, "pass smaller sizes with shapes= / --shape, or verify=False")
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


class Reference:
    """ONNX Runtime (CPU, all optimizations off) on the original model, loaded once.

    Raises RuntimeRefusedError when ONNX Runtime refuses the model: the model's problem, said
    with ONNX Runtime's reason. Its log is silenced (severity fatal): a probe of input sizes
    that the model rejects is an answer, not an error for the user's terminal."""

    def __init__(self, model_path_or_proto: str | onnx.ModelProto) -> None:
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        so.log_severity_level = 4
        src = model_path_or_proto
        if isinstance(src, onnx.ModelProto):
            src = src.SerializeToString()
        try:
            self.session = ort.InferenceSession(src, so, providers=["CPUExecutionProvider"])
        except Exception as e:  # ORT raises its own Fail/InvalidGraph/... types
            raise RuntimeRefusedError(
                f"ONNX Runtime, edgec's reference, refuses the model: {runtime_reason(e)}; "
                "fix the model (onnx.checker.check_model(model, full_check=True) shows more)"
            ) from None
        self._run_options = ort.RunOptions()
        self._run_options.log_severity_level = 4
        self.names = [o.name for o in self.session.get_outputs()]
        self.wanted = {i.name for i in self.session.get_inputs()}

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        outs = self.session.run(None, {k: v for k, v in feeds.items() if k in self.wanted},
                                self._run_options)
        return dict(zip(self.names, outs))

    def accepts(self, feeds: Mapping[str, np.ndarray]) -> bool:
        """Whether the model runs on `feeds` (a probe of candidate input sizes)."""
        try:
            self.run(feeds)
            return True
        except Exception:
            return False


@dataclass
class VerifyPlan:
    """What verification compares against, fixed before anything is built: the inputs, where
    they came from, the reference's outputs on them and the outputs' computing scales."""

    feeds: dict[str, np.ndarray] | None
    origin: str
    expected: dict[str, np.ndarray] = field(default_factory=dict)
    scales: dict[str, float] = field(default_factory=dict)

    def bindings(self, graph: Graph) -> dict[str, int]:
        """Sizes of `graph`'s symbolic input dims in these inputs."""
        out: dict[str, int] = {}
        for v in real_inputs(graph):
            arr = (self.feeds or {}).get(v.name)
            if arr is None or v.shape is None or np.ndim(arr) != len(v.shape):
                continue
            out.update({d: int(n) for d, n in zip(v.shape, np.shape(arr)) if isinstance(d, str)})
        return out

    def check(self, runner, precision: str) -> VerifyReport:
        """Run `runner` on the inputs and compare with the reference at `precision`."""
        if self.feeds is None:
            return VerifyReport(passed=None, skipped=self.origin)
        rep = compare(self.expected, runner.run(self.feeds), TOLERANCES[precision],
                      self.scales)
        rep.inputs_from = self.origin
        rep.input_shapes = {k: list(np.shape(v)) for k, v in self.feeds.items()}
        return rep


def plan(reference_model: str | onnx.ModelProto, graph: Graph,
         feeds: Mapping[str, np.ndarray] | None, shapes: Mapping[str, tuple[int, ...]],
         options: Mapping[str, Any] | None = None) -> VerifyPlan:
    """Load the reference (RuntimeRefusedError if ONNX Runtime refuses the model), pick the
    inputs (`feeds`, else generated ones the reference accepts) and run the reference."""
    from compiler.errors import CompileError

    ref = Reference(reference_model)
    scales = output_scales(graph)
    if feeds is not None:
        try:
            return VerifyPlan(dict(feeds), "example inputs / calibration sample",
                              ref.run(feeds), scales)
        except Exception as e:
            raise CompileError(f"the original model does not run on the example inputs / first "
                               f"calibration sample: {runtime_reason(e)}") from None
    found, origin = make_inputs(graph, shapes=shapes, accept=ref.accepts, options=options)
    if found is None:
        return VerifyPlan(None, origin)
    return VerifyPlan(found, origin, ref.run(found), scales)


def reference_outputs(model_path_or_proto: str | onnx.ModelProto,
                      feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """ONNX Runtime (CPU, all optimizations off) on the original model."""
    return Reference(model_path_or_proto).run(feeds)


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
