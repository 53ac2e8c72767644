"""Cost model: per-node work (FLOPs, bytes), liveness memory, a calibrated roofline per kernel.

`predict(graph, config, profile)` -> Prediction (latency_ms, memory_mb, energy_mj, uncertainty,
per-kernel breakdown); calibration files live in compiler/cost/data/ (see `params`).

The names below load their module on first use: importing one submodule (the passes read
`compiler.cost.flops`) must not load the whole model.
"""

from __future__ import annotations

from compiler.lazy import lazy_exports

__all__ = ["Params", "Prediction", "activation_liveness", "graph_flops", "node_flops",
           "predict", "weight_bytes"]

# public name -> the module defining it
_LAZY = {"graph_flops": "compiler.cost.flops", "node_flops": "compiler.cost.flops",
         "activation_liveness": "compiler.cost.memory", "weight_bytes": "compiler.cost.memory",
         "Prediction": "compiler.cost.model", "predict": "compiler.cost.model",
         "Params": "compiler.cost.params"}

__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
