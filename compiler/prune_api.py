"""`apply_pruning`: structured pruning for compile() and for the public `compiler.prune`
(`compiler.driver.prune`).

pruning (compile's `pruning=`, prune's `ratio`):
- a float in [0, 1): the fraction of the graph's FLOPs to remove (passes.pruning.select);
- "auto": ratios chosen with the target's cost model under `max_accuracy_drop` (see
  compiler.prune_auto);
- a mapping: {"ratio": 0.3, "importance": "magnitude" | "activation" | "wifv",
  "recovery": "none" | "bias" | "lstsq" | "auto", "max_group_ratio": 0.8, "align": 8}.

With calibration data the defaults are WIFV importance and per-layer automatic recovery;
without, magnitude importance and no reconstruction (the report says so). Channel counts are
rounded to the target's `channel_alignment`. Pruning runs on the simplified graph (shapes
inferred, constants folded), before precision and fusion. The pruned graph becomes the
verification reference of the bundle, and the report records how far it is from the original
on the calibration samples (or generated inputs): cosine, max abs error, and the metric (the
user's `metric(reference, outputs)`, else the fraction of top-1 predictions that changed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np
import onnx

from compiler.errors import ConstraintError
from compiler.ir import Graph

__all__ = ["PrunedReference", "apply_pruning", "parse_pruning", "pruning_distance"]

_KEYS = ("ratio", "importance", "recovery", "max_group_ratio", "align")


def parse_pruning(pruning: Any) -> dict[str, Any]:
    """The pruning options as a dict (see the module docstring)."""
    if isinstance(pruning, str):
        if pruning == "auto":
            return {"auto": True}
        try:
            pruning = float(pruning)
        except ValueError:
            raise ConstraintError(f"pruning must be a ratio in [0, 1), 'auto' or a mapping, got "
                                  f"{pruning!r}") from None
    if isinstance(pruning, (int, float)) and not isinstance(pruning, bool):
        opts: dict[str, Any] = {"ratio": float(pruning)}
    elif isinstance(pruning, Mapping):
        unknown = set(pruning) - set(_KEYS) - {"auto"}
        if unknown:
            raise ConstraintError(f"unknown pruning option(s) {sorted(unknown)}; known: "
                                  f"{', '.join(_KEYS)}")
        opts = dict(pruning)
    else:
        raise ConstraintError(f"pruning must be a ratio in [0, 1), 'auto' or a mapping, got "
                              f"{pruning!r}")
    if not opts.get("auto"):
        r = opts.get("ratio", 0.3)
        if not isinstance(r, (int, float)) or not 0.0 <= float(r) < 1.0:
            raise ConstraintError(f"pruning ratio must be in [0, 1), got {r!r}")
    return opts


class PrunedReference:
    """What verification compares a pruned bundle with: the pruned graph in FP32."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.proto = proto

    def reference(self) -> onnx.ModelProto:
        return self.proto


def _samples(graph: Graph, calibration, shapes, n: int = 16) -> list[dict[str, np.ndarray]]:
    if calibration:
        return [{k: np.asarray(v) for k, v in f.items()} for f in list(calibration)[:n]]
    from compiler.verify import make_inputs

    feeds, _ = make_inputs(graph, shapes=shapes)
    return [feeds] if feeds is not None else []


def pruning_distance(original: Any, pruned: onnx.ModelProto,
                     samples: list[dict[str, np.ndarray]],
                     metric: Callable[[Any, Any], float] | None = None) -> dict[str, Any]:
    """Cosine and max abs error of all outputs, and the metric, pruned vs original."""
    from compiler.precision_api import top1_disagreement
    from compiler.verify import reference_outputs

    if not samples:
        return {"skipped": "no calibration data and no inputs could be generated"}
    ref = [reference_outputs(original, f) for f in samples]
    got = [reference_outputs(pruned, f) for f in samples]
    a = np.concatenate([np.asarray(r[k], np.float64).ravel() for r in ref for k in r])
    b = np.concatenate([np.asarray(o[k], np.float64).ravel() for o in got for k in o])
    cos = float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
    out = {"samples": len(samples), "cosine": round(cos, 6),
           "max_abs_error": float(np.max(np.abs(a - b))) if a.size else 0.0}
    if metric is not None:
        out["metric"] = float(metric(ref, got))
        out["metric_name"] = getattr(metric, "__name__", "metric")
    else:
        out["metric"] = float(top1_disagreement(ref, got))
        out["metric_name"] = "top-1 disagreement with the unpruned model"
    return out


def apply_pruning(graph: Graph, source: Any, profile, pruning: Any,
                  calibration: Iterable[Mapping] | None, metric=None, shapes=None,
                  constraints: Mapping[str, Any] | None = None
                  ) -> tuple[dict[str, Any], PrunedReference]:
    """Prune `graph` in place for `profile`; (manifest report, the new reference)."""
    from compiler.onnx_io import export_onnx
    from passes.pruning import prune_graph

    opts = parse_pruning(pruning)
    original = source.reference()  # before pruning: a Graph source is pruned in place
    calibration = list(calibration) if calibration is not None else None
    align = int(opts.get("align") or getattr(profile, "channel_alignment", 1) or 1)
    if opts.get("auto"):
        from compiler.prune_auto import auto_prune

        report = auto_prune(graph, source, profile, calibration, metric, shapes,
                            constraints or {}, align)
    else:
        report = prune_graph(graph, float(opts.get("ratio", 0.3)), calibration=calibration,
                             importance=opts.get("importance"), recovery=opts.get("recovery"),
                             align=align, max_group_ratio=float(opts.get("max_group_ratio", 0.8)))
    proto = export_onnx(graph)
    report["distance"] = pruning_distance(original, proto,
                                          _samples(graph, calibration, shapes), metric)
    return report, PrunedReference(proto)
