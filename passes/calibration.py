"""Streaming activation statistics with ONNX Runtime, in bounded memory.

The model is run once over the calibration samples with the tensors of interest added as extra
graph outputs; each batch updates one observer per tensor and is then dropped, so memory is
O(#tensors x bins), not O(#samples). Observers:

- `minmax`: running min and max;
- `percentile`: a fixed-size histogram; [lo, hi] are the (100 - p) and p percentiles;
- `entropy`: the TensorRT / ONNX Runtime KL method on the magnitude histogram: the threshold t
  minimises KL(P || Q) where P is the histogram clipped at t (outliers folded into the last bin)
  and Q is P requantized to the number of int8 levels; [lo, hi] = [max(min, -t), min(max, t)];
- `mse`: the range minimising the expected squared error of 8-bit asymmetric quantization over
  the histogram, clipping (values outside [lo, hi] become lo or hi) plus rounding (step
  D = (hi - lo) / 255, D^2 / 12 per value inside), over a grid of tail quantiles on each side;
- `auto` (`collect` only): one histogram per tensor, and the ranges of every method in
  `AUTO_METHODS` (`CalibrationResult.alternatives`); the caller picks one per model by the
  error it causes (`compiler.precision_api` picks by the layers' local output noise).

The histogram never stores samples: when a batch falls outside [lo, hi] the range doubles
towards it and adjacent bin pairs merge, which is exact, so the histogram of a stream equals
(up to that merging) the histogram of all its samples.

`collect` can also accumulate per-channel means (`means`: (tensor, axis) pairs): a running
float64 sum over every other axis and a count, so memory is O(channels) per tensor; weight bias
correction (passes.bias_correction) needs E[x] per input channel of each quantized layer.

`collect` also keeps the FP32 outputs of the first `keep` samples (and those samples), which
the sensitivity analysis compares quantized models against.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx

from compiler.errors import ConstraintError
from compiler.ir import Graph
from compiler.resources import check_allocation

__all__ = ["CalibrationResult", "ChannelMeanObserver", "HistogramObserver", "MinMaxObserver",
           "collect", "make_observer", "make_session", "placeholder_calibration", "run_model",
           "with_outputs", "AUTO_METHODS", "METHODS"]

METHODS = ("minmax", "percentile", "entropy", "mse", "auto")
AUTO_METHODS = ("percentile", "mse", "minmax")  # ties go to the first
_MSE_TAILS = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 3e-3, 1e-2, 3e-2)


class MinMaxObserver:
    """Running min and max of every value seen."""

    def __init__(self) -> None:
        self.min, self.max = np.inf, -np.inf

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if x.size:
            self.min = min(self.min, float(np.nanmin(x)))
            self.max = max(self.max, float(np.nanmax(x)))

    def range(self) -> tuple[float, float]:
        if not np.isfinite(self.min):
            return 0.0, 0.0
        return self.min, self.max


class HistogramObserver(MinMaxObserver):
    """A `bins`-bin histogram over a range that grows by exact doubling."""

    def __init__(self, method: str = "percentile", bins: int = 2048,
                 percentile: float = 99.99, levels: int | None = None) -> None:
        super().__init__()
        if bins % 2:
            raise ValueError("bins must be even")
        self.method, self.bins, self.percentile, self.levels = method, bins, percentile, levels
        self.hist: np.ndarray | None = None
        self.lo = self.hi = 0.0

    def update(self, x: np.ndarray) -> None:
        # float64: a float32 range near +-3.4e38 (or of subnormal width) overflows numpy's
        # bin arithmetic; the histogram's edges are float64 anyway
        x = np.asarray(x, np.float64).ravel()
        x = x[np.isfinite(x)]
        if not x.size:
            return
        mn, mx = float(x.min()), float(x.max())
        self.min, self.max = min(self.min, mn), max(self.max, mx)
        if self.hist is None:
            width = mx - mn
            if width <= 0:
                width = max(abs(mx), 1e-6) * 1e-3
            self.lo, self.hi = mn, mn + width
            self.hist = np.zeros(self.bins, np.int64)
        while mn < self.lo or mx > self.hi:
            self._grow(mn, mx)
        h, _ = np.histogram(x, bins=self.bins, range=(self.lo, self.hi))
        self.hist += h

    def _grow(self, mn: float, mx: float) -> None:
        assert self.hist is not None
        width = self.hi - self.lo
        merged = self.hist.reshape(-1, 2).sum(axis=1)
        new = np.zeros_like(self.hist)
        if mx - self.hi >= self.lo - mn:
            new[: self.bins // 2] = merged
            self.hi = self.lo + 2 * width
        else:
            new[self.bins // 2:] = merged
            self.lo = self.hi - 2 * width
        self.hist = new

    def _edges(self) -> np.ndarray:
        return np.linspace(self.lo, self.hi, self.bins + 1)

    def range(self) -> tuple[float, float]:
        return self.range_for(self.method)

    def range_for(self, method: str) -> tuple[float, float]:
        """The range `method` picks from this histogram (minmax: the running extremes)."""
        if self.hist is None or self.hist.sum() == 0:
            return super().range()
        if method == "percentile":
            return self._percentile_range()
        if method == "entropy":
            return self._entropy_range()
        if method == "mse":
            return self._mse_range()
        return super().range()

    def _mse_range(self) -> tuple[float, float]:
        assert self.hist is not None
        edges = self._edges()
        centers = (edges[:-1] + edges[1:]) / 2
        h = self.hist.astype(np.float64)
        cdf = np.cumsum(h) / h.sum()
        los = np.array([edges[int(np.searchsorted(cdf, q))] if q else self.min
                        for q in _MSE_TAILS])
        his = np.array([edges[min(int(np.searchsorted(cdf, 1 - q)) + 1, self.bins)] if q
                        else self.max for q in _MSE_TAILS])
        lo = np.minimum(np.maximum(los, self.min), 0.0)[:, None, None]  # zero is exact
        hi = np.maximum(np.minimum(his, self.max), 0.0)[None, :, None]
        step = np.maximum(hi - lo, 1e-30) / 255.0
        c = centers[None, None, :]
        err = np.where(c < lo, (c - lo) ** 2, np.where(c > hi, (c - hi) ** 2, step ** 2 / 12))
        total = (err * h).sum(axis=2)
        i, j = np.unravel_index(int(np.argmin(total)), total.shape)
        return max(self.min, float(los[i])), min(self.max, float(his[j]))

    def _percentile_range(self) -> tuple[float, float]:
        cdf = np.cumsum(self.hist) / self.hist.sum()
        edges = self._edges()
        q = self.percentile / 100.0
        lo = edges[int(np.searchsorted(cdf, 1.0 - q))]
        hi = edges[min(int(np.searchsorted(cdf, q)) + 1, self.bins)]
        return max(self.min, float(lo)), min(self.max, float(hi))

    def _entropy_range(self) -> tuple[float, float]:
        assert self.hist is not None
        edges = self._edges()
        centers = np.abs((edges[:-1] + edges[1:]) / 2)
        amax = max(abs(self.lo), abs(self.hi))
        nb = self.bins // 2
        mag, _ = np.histogram(centers, bins=nb, range=(0, amax), weights=self.hist)
        levels = self.levels or (255 if self.min >= 0 else 128)
        best, best_t = np.inf, amax
        for i in range(levels, nb + 1, max(1, (nb - levels) // 64)):
            p = mag[:i].astype(np.float64).copy()
            p[-1] += mag[i:].sum()
            chunks = np.array_split(np.arange(i), levels)
            q = np.zeros(i)
            for c in chunks:
                nz = p[c] > 0
                if nz.any():
                    q[c[nz]] = p[c].sum() / nz.sum()
            ps, qs = p / p.sum(), q / max(q.sum(), 1e-30)
            m = ps > 0
            kl = float(np.sum(ps[m] * np.log(ps[m] / np.maximum(qs[m], 1e-30))))
            if kl < best - 1e-12:
                best, best_t = kl, (i / nb) * amax
        return max(self.min, -best_t), min(self.max, best_t)


class ChannelMeanObserver:
    """Running mean per index of `axis`, over all other axes (float64 sums, bounded memory).
    A stream whose channel count changes has no mean (`value()` is None)."""

    def __init__(self, axis: int) -> None:
        self.axis = axis
        self.sum: np.ndarray | None = None
        self.count = 0
        self.consistent = True

    def update(self, x: np.ndarray) -> None:
        x = np.asarray(x)
        if not self.consistent or x.ndim == 0 or not x.size:
            return
        if not -x.ndim <= self.axis < x.ndim:
            self.consistent = False
            return
        axis = self.axis % x.ndim
        s = x.sum(axis=tuple(i for i in range(x.ndim) if i != axis), dtype=np.float64)
        if self.sum is None:
            self.sum = s
        elif self.sum.shape != s.shape:
            self.consistent = False
            return
        else:
            self.sum += s
        self.count += x.size // x.shape[axis]

    def value(self) -> np.ndarray | None:
        if not self.consistent or self.sum is None or not self.count:
            return None
        return self.sum / self.count


def make_observer(method: str = "minmax", **kw) -> MinMaxObserver:
    """An observer for `method` in METHODS; `kw` goes to HistogramObserver."""
    if method == "minmax":
        return MinMaxObserver()
    if method in ("percentile", "entropy", "mse", "auto"):
        return HistogramObserver("percentile" if method == "auto" else method, **kw)
    raise ConstraintError(f"unknown calibration method {method!r}; choose one of {METHODS}")


# ---------------------------------------------------------------------------------------------
def make_session(model: onnx.ModelProto | bytes, threads: int = 2, optimize: bool = True):
    """An ONNX Runtime CPU session with a fixed thread count (deterministic partitioning)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model if isinstance(model, bytes) else model.SerializeToString()
    return ort.InferenceSession(data, so, providers=["CPUExecutionProvider"])


def run_model(session, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    wanted = {i.name for i in session.get_inputs()}
    return dict(zip(names, session.run(None, {k: v for k, v in feeds.items() if k in wanted})))


@dataclass
class CalibrationResult:
    """Per-tensor ranges and shapes, kept samples and their FP32 outputs, and the requested
    per-channel means keyed by (tensor, axis). With method "auto", `alternatives` holds the
    ranges of each of `AUTO_METHODS` and `ranges` the percentile ones until a caller picks."""

    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    samples: list[dict[str, np.ndarray]] = field(default_factory=list)
    reference: list[dict[str, np.ndarray]] = field(default_factory=list)
    n_samples: int = 0
    method: str = "minmax"
    means: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    alternatives: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)


def with_outputs(graph: Graph, names: Iterable[str]) -> onnx.ModelProto:
    """`graph` exported with the values `names` added as graph outputs."""
    from compiler.onnx_io import export_onnx

    model = export_onnx(graph)
    have = {o.name for o in model.graph.output}
    types = {v.name: v.dtype for v in graph.values()}
    for n in names:
        if n not in have:
            model.graph.output.append(onnx.helper.make_tensor_value_info(
                n, types.get(n) or onnx.TensorProto.FLOAT, None))
            have.add(n)
    return model


def collect(graph: Graph, tensors: Iterable[str], calibration: Iterable[Mapping],
            method: str = "minmax", *, keep: int = 32, max_samples: int | None = None,
            threads: int = 2, means: Iterable[tuple[str, int]] = (),
            memory_options: Mapping | None = None, **observer_kw) -> CalibrationResult:
    """Run `graph` over `calibration` (feed dicts) and observe `tensors` (value names); for each
    (tensor, axis) in `means` also the per-channel mean along `axis` (in the same run). The
    kept samples and outputs are sized before they are kept (compiler.resources; the cap from
    `memory_options`)."""
    tensors = list(dict.fromkeys(tensors))
    mean_obs = {(t, int(a)): ChannelMeanObserver(int(a)) for t, a in means}
    outputs = [o.name for o in graph.outputs]
    sess = make_session(with_outputs(graph, tensors + [t for t, _ in mean_obs]))
    obs = {t: make_observer(method, **observer_kw) for t in tensors}
    res = CalibrationResult(method=method)
    it = iter(calibration)
    if max_samples is not None:
        it = itertools.islice(it, max_samples)
    for feeds in it:
        feeds = {k: np.asarray(v) for k, v in feeds.items()}
        got = run_model(sess, feeds)
        for t in tensors:
            obs[t].update(got[t])
            res.shapes.setdefault(t, tuple(got[t].shape))
        for (t, _), m in mean_obs.items():
            m.update(got[t])
        if len(res.samples) < keep:
            if not res.samples:  # size the kept buffers before filling them
                per = sum(a.nbytes for a in feeds.values()) + sum(got[o].nbytes for o in outputs)
                check_allocation(per * keep, f"calibration buffers ({keep} kept samples and "
                                 "their outputs)", memory_options,
                                 "pass fewer or smaller calibration samples")
            res.samples.append(feeds)
            res.reference.append({o: got[o] for o in outputs})
        res.n_samples += 1
    if res.n_samples == 0:
        raise ConstraintError("the calibration data holds no samples")
    res.ranges = {t: tuple(float(x) for x in o.range()) for t, o in obs.items()}
    if method == "auto":
        res.alternatives = {m: {t: tuple(float(x) for x in o.range_for(m))  # type: ignore
                                for t, o in obs.items()} for m in AUTO_METHODS}
    res.means = {k: v for k, m in mean_obs.items() if (v := m.value()) is not None}
    return res


def placeholder_calibration(graph: Graph, bindings: Mapping[str, int] | None = None
                            ) -> CalibrationResult:
    """Statistics without data: every float value's range is [-1, 1] (after a Relu [0, 1]),
    shapes are the inferred ones with symbolic dims from `bindings` (else 1), no samples. A
    graph lowered with it computes the wrong numbers but has the nodes, types and shapes of the
    real lowering: what the configuration search costs before any calibration data is read."""
    res = CalibrationResult(method="placeholder")
    for v in graph.values():
        if v.dtype not in (None, onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                           onnx.TensorProto.BFLOAT16) or v.const is not None:
            continue
        relu = v.producer is not None and v.producer.op_type == "Relu"
        res.ranges[v.name] = (0.0 if relu else -1.0, 1.0)
        if v.shape is not None:
            res.shapes[v.name] = tuple(
                int((bindings or {}).get(d, 1)) if not isinstance(d, int) else d
                for d in v.shape)
    return res
