"""Published measurements as calibration (and validation) points for devices we cannot reach.

Each point names its source precisely. `use` says what it is for:

- "calibrate": fitted into the (device, backend) calibration file;
- "validate": never fitted; tests compare predictions against it.

Jetson AGX Orin / TensorRT. The only fitted point is NVIDIA's DLA throughput for ResNet-50
(batch 2 on both DLAs, 2037 img/s at MAXN, i.e. one DLA core finishes a batch of 2 every
2 / (2037 / 2) s = 1.964 ms). It fixes one number: a scale on the prior compute inverse
efficiencies of int8 conv/matmul, which the GPU inherits (assumption: TensorRT's int8 conv
kernels reach the same fraction of dense peak on the Ampere GPU as on the DLA). Bandwidth
efficiency and launch overheads stay at the generic priors of `compiler.cost.model`. The MLPerf
GPU latency (0.640 ms) is a validation point only. This is not fully independent: same model,
same device and software stack; see `tests/test_cost_orin.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

from compiler.cost.model import predict
from compiler.cost.params import Calibration, Params, prior_params, save_calibration
from compiler.ir import Graph

__all__ = ["POINTS", "PublishedPoint", "calibrate_device", "points_for"]


@dataclass(frozen=True)
class PublishedPoint:
    device: str
    backend: str
    model: str  # "resnet50" (the test models' compiler.zoo.resnet)
    precision: str
    batch: int
    size: int
    latency_ms: float  # per inference of `batch` images on one engine instance
    unit: str
    power_mode: str
    metric: str
    source: str
    use: str  # "calibrate" | "validate"


POINTS: tuple[PublishedPoint, ...] = (
    PublishedPoint(
        "jetson-orin-agx", "tensorrt", "resnet50", "int8", 2, 224, 2e3 / (2037 / 2), "dla",
        "MAXN", "throughput 2037 img/s on 2x DLA, batch 2 -> 1.964 ms per batch per DLA core",
        "vendor: NVIDIA/Deep-Learning-Accelerator-SW README, Orin DLA performance table "
        "(JetPack 5.1.1, TensorRT 8.5.2), ResNet-50 batch 2, MAXN", "calibrate"),
    PublishedPoint(
        "jetson-orin-agx", "tensorrt", "resnet50", "int8", 1, 224, 0.640, "gpu", "MAXN",
        "SingleStream 90th-percentile latency",
        "MLPerf Inference v3.1, closed division, NVIDIA, Jetson AGX Orin 64GB, TensorRT 8.5.2 / "
        "JetPack 5.1.1 (mlcommons/inference_results_v3.1, "
        "closed/NVIDIA/results/Orin_TRT/resnet50/SingleStream)", "validate"),
)
COMPUTE_KEYS = ("conv/int8", "matmul/int8")


def points_for(device: str, backend: str, use: str | None = None) -> list[PublishedPoint]:
    return [p for p in POINTS if p.device == device and p.backend == backend
            and (use is None or p.use == use)]


def _config(point: PublishedPoint) -> dict:
    return {"backend": point.backend, "precision": point.precision, "unit": point.unit,
            "power_mode": point.power_mode}


def calibrate_device(profile, backend: str, graph_for: Callable[[PublishedPoint], Graph],
                     write: bool = False) -> Calibration:
    """Fit the compute-efficiency scale from the "calibrate" points of (`profile`, `backend`)
    (bisection on log scale: predicted time is monotone in it) and return (optionally store)
    the Calibration. `graph_for(point)` is the IR of the point's model (`point.model` at
    `point.size` and `point.batch`): the caller builds it, the product ships no models (the
    ResNet-50 of the stored Orin file is `compiler.zoo.resnet`)."""
    device = profile.name
    prior = prior_params(profile, backend)
    pts = points_for(device, backend, "calibrate")
    if not pts:
        raise ValueError(f"no published calibration point for {device}/{backend}")
    graphs = [(graph_for(p), p) for p in pts]

    def err(scale: float) -> float:
        params = _scaled(prior, scale)
        return sum(predict(g, _config(p), profile, calibration=params).latency_ms / p.latency_ms
                   - 1 for g, p in graphs)

    lo, hi = 1 / 16, 16.0
    for _ in range(40):
        mid = (lo * hi) ** 0.5
        lo, hi = (mid, hi) if err(mid) < 0 else (lo, mid)
    scale = (lo * hi) ** 0.5
    params = _scaled(prior, scale)
    params.uncertainty = 0.3
    params.source = (f"published: {len(pts)} point(s), compute inverse efficiency x{scale:.3f} "
                     "on the generic prior; GPU inherits the DLA-derived efficiency")
    meas = [{**asdict(p), "predicted_ms": round(predict(g, _config(p), profile,
                                                         calibration=params).latency_ms, 4)}
            for g, p in graphs]
    cal = Calibration(device, backend, params, "", {"scale": scale}, meas, [
        "uncertainty 0.3: one published point, transferred across compute units",
        "validation points (not fitted): " + "; ".join(
            f"{p.model} b{p.batch} {p.unit} {p.latency_ms} ms" for p in
            points_for(device, backend, "validate"))])
    if write:
        save_calibration(cal)
    return cal


def _scaled(prior: Params, scale: float) -> Params:
    p = Params.from_dict(prior.to_dict())
    p.inv_eff = {k: v * scale if k in COMPUTE_KEYS else v for k, v in prior.inv_eff.items()}
    return p
