"""Cost model: per-node work (FLOPs, bytes), liveness memory, a calibrated roofline per kernel.

`predict(graph, config, profile)` -> Prediction (latency_ms, memory_mb, energy_mj, uncertainty,
per-kernel breakdown); calibration files live in compiler/cost/data/ (see `calibration`).
"""

from compiler.cost.flops import graph_flops, node_flops
from compiler.cost.memory import activation_liveness, weight_bytes
from compiler.cost.model import Params, Prediction, predict

__all__ = ["Params", "Prediction", "activation_liveness", "graph_flops", "node_flops",
           "predict", "weight_bytes"]
