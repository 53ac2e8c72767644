"""Configuration search: enumerate, prune, predict, keep the best under constraints.

Space per device: backend (profile.backends) x precision policy (fp32, fp16, bf16, int8, mixed,
int4-weight, as profile.precisions allows) x the runtime precision of the float layers (what
the backend offers on the device: `Backend.runtime_precisions`, e.g. OpenVINO's bf16 hint on a
CPU with AMX; not for the fp16/bf16 policies, whose graph is already half) x edgec fusion
on/off x backend options (threads: all cores, or 1 on a multi-core CPU) x power mode (devices
with several). A configuration names `runtime_precision` only when it is not fp32.

Pruning, before any prediction, each with its reason:
- illegal: backend not serving the profile, precision not supported, backend module missing,
  or the backend's legality report lists unsupported nodes;
- equivalent: fusion off on a backend that fuses natively (OpenVINO, TVM, TensorRT) gives the
  same kernels; int4-weight on a graph with no MatMul/Gemm weight is fp32;
- dominated: fp16/bf16 where the backend has no half-precision kernel for any of the graph's
  Conv/MatMul/Gemm on the unit (ONNX Runtime on x86 CPUs): it runs as fp32 plus the Casts the
  runtime inserts;
- lossless-only: `max_accuracy_drop == 0` keeps fp32 alone (otherwise the budget is passed
  through in the chosen config for the precision pass to honour);
- lossy: a half runtime precision is taken only when the user accepts a loss
  (`max_accuracy_drop` > 0); verification then checks it at that half's tolerance.

The rest is predicted with `compiler.cost.model.predict` on the graph as the configuration
compiles it: lowered to its precision by the precision pass (`lower_graph`: placeholder
ranges, "mixed" without its sensitivity search) and fused (`prepare_graph`). Where a
lowering fails the precision is simulated on the float graph instead.

Constraints (max_latency_ms, max_memory_mb) filter; the objective (latency | energy | memory)
ranks, ties broken by latency, memory, then the configuration closest to the defaults
(fusion on, all threads, the least lossy precision, the target's default backend first), then
its text, so the result is deterministic. The Pareto front is over (latency, memory, accuracy
risk of the precision). When nothing is feasible, `ConstraintError` names the smallest
achievable value.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from compiler.cost.kernels import NATIVE_FUSION, half_kernels, resolve_config
from compiler.cost.model import Prediction, predict
from compiler.errors import ConstraintError
from compiler.ir import Graph

__all__ = ["Candidate", "SearchResult", "compiled_graph", "config_space", "lower_graph",
           "prepare_graph", "search"]

OBJECTIVES = {"latency": "latency_ms", "energy": "energy_mj", "memory": "memory_mb"}
POLICIES = ("fp32", "fp16", "bf16", "int8", "mixed", "int4-weight", "fixed")
RISK = {"fp32": 0, "fp16": 1, "bf16": 1, "mixed": 2, "int8": 3, "int4-weight": 4, "fixed": 2}
# policies whose float layers a runtime hint applies to (fp16/bf16 graphs are half already)
HINTABLE = ("fp32", "int8", "mixed", "int4-weight")


def risk(config: Mapping[str, Any]) -> int:
    """Accuracy risk of a configuration: its precision's, or its runtime hint's if higher."""
    return max(RISK[config["precision"]], RISK[config.get("runtime_precision", "fp32")])


def runtime_precisions(backend: str, profile) -> tuple[str, ...]:
    """What the backend offers for float layers on the device ("fp32" alone when its module
    is missing: the legality pruning names that)."""
    from targets.base import get_backend

    try:
        return get_backend(backend).runtime_precisions(profile)
    except Exception:
        return ("fp32",)


@dataclass
class Candidate:
    config: dict[str, Any]
    prediction: Prediction | None = None
    pruned: str = ""

    @property
    def key(self) -> str:
        return json.dumps(self.config, sort_keys=True)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"config": self.config}
        if self.prediction is not None:
            d["predicted"] = self.prediction.summary()
        if self.pruned:
            d["pruned"] = self.pruned
        return d


@dataclass
class SearchResult:
    choice: Candidate
    runners_up: list[Candidate]
    pareto: list[Candidate]
    candidates: list[Candidate] = field(default_factory=list)
    pruned: list[Candidate] = field(default_factory=list)
    objective: str = "latency"

    def to_dict(self) -> dict[str, Any]:
        return {"objective": self.objective, "choice": self.choice.to_dict(),
                "runners_up": [c.to_dict() for c in self.runners_up],
                "pareto": [c.to_dict() for c in self.pareto],
                "pruned": [c.to_dict() for c in self.pruned]}


def config_space(profile, backends: Sequence[str] | None = None,
                 precisions: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Every configuration before pruning, in a fixed order."""
    precs = [p for p in (precisions or POLICIES)
             if p in profile.precisions or (p == "mixed" and "int8" in profile.precisions)]
    unit = profile.main_unit
    threads = [0, 1] if unit.kind == "cpu" and (unit.cores or 1) > 1 else [0]
    modes = [m.name for m in profile.power_modes] if len(profile.power_modes) > 1 else [None]
    out = []
    for be in backends or profile.backends:
        offered = runtime_precisions(be, profile)
        for prec, fusion, thr, mode in itertools.product(precs, (True, False), threads, modes):
            for rp in offered if prec in HINTABLE else ("fp32",):
                c = {"backend": be, "precision": prec, "fusion": fusion, "threads": thr}
                if rp != "fp32":
                    c["runtime_precision"] = rp
                if mode is not None:
                    c["power_mode"] = mode
                out.append(c)
    return out


def _empty_space(profile, backends: Sequence[str] | None,
                 precisions: Sequence[str] | None) -> str:
    """Why `config_space` is empty: the precisions asked for are none the device computes."""
    asked = list(precisions or POLICIES)
    msg = (f"no legal configuration for {profile.name}: it computes "
           f"{', '.join(profile.precisions) or 'no precision'} and the search was asked for "
           f"{', '.join(asked)}")
    if asked == ["fp32"]:
        msg += ("; fp32 is the lossless default when no loss is accepted: give "
                f"precision={profile.precisions[0]!r} with calibration data (CLI: --precision "
                f"{profile.precisions[0]} --calib DIR)" if profile.precisions else "")
    return msg


def lower_graph(graph: Graph, config: Mapping[str, Any], profile,
                feeds: Mapping[str, Any] | None = None,
                bindings: Mapping[str, int] | None = None) -> Graph:
    """A copy of `graph` lowered to `config["precision"]` as compile() lowers it with the
    pipeline the configuration compiles with (fusion on: the default pipeline, off: the
    unfused one): the stages before fusion, Conv+BatchNormalization folded when fusion follows,
    then `apply_precision` for the backend, with activation ranges from `feeds`, or without
    feeds from `placeholder_calibration` at `bindings` (the structure without its numbers).
    The search costs this graph, so what it predicts has the Q/DQ, requantization and Casts
    the deployment has. Not carried over from compile(): the user's precision constraints
    (keep_float, block size), and "mixed" is lowered without its sensitivity search (int8
    wherever predicted faster): the accuracy budget can only keep more layers float, and it
    needs the user's calibration data."""
    import passes.fusion  # noqa: F401 - registers the "fusion" pass
    from compiler.cost.layer_proxy import speed_proxy
    from compiler.onnx_io import export_onnx, import_onnx
    from compiler.pipeline import (
        DEFAULT_PIPELINE,
        UNFUSED_PIPELINE,
        PassManager,
        get_pipeline,
        split_at_fusion,
    )
    from compiler.precision_api import apply_precision
    from passes.base import PassContext, get_pass
    from passes.calibration import placeholder_calibration

    copy = import_onnx(export_onnx(graph), base_dir=graph.model.base_dir)
    before, after = split_at_fusion(get_pipeline(
        DEFAULT_PIPELINE if config.get("fusion", True) else UNFUSED_PIPELINE))
    ctx = PassContext(profile=profile, backend=None)
    for pm in before:
        pm.run(copy, ctx)
    if config.get("precision", "fp32") == "fp32":
        return copy
    if after:
        PassManager([get_pass("fusion", rule_sets=("conv_bn",))]).run(copy, ctx)
    stats = [dict(feeds)] if feeds is not None else placeholder_calibration(copy, bindings)
    apply_precision(copy, profile, config["backend"], config["precision"], stats,
                    {"sensitivity_samples": 1, "sensitivity": False},
                    proxy=speed_proxy(copy, profile, config["backend"]))
    return copy


def prepare_graph(graph: Graph, config: Mapping[str, Any], profile, *,
                  in_place: bool = False) -> Graph:
    """A copy of `graph` (`in_place`: `graph` itself) as the configuration compiles it (fusion
    pipeline when on); lower it first with `lower_graph` for a precision other than fp32."""
    from compiler.onnx_io import export_onnx, import_onnx
    from passes.base import PassContext

    copy = graph if in_place else import_onnx(export_onnx(graph), base_dir=graph.model.base_dir)
    if config.get("fusion", True):
        import passes.fusion  # noqa: F401 - registers the "fusion" pipeline
        from compiler.pipeline import get_pipeline
        from targets.base import get_backend

        try:
            be = get_backend(config["backend"])
        except Exception:  # backend module missing: fuse for a backend accepting nothing
            be = None
        ctx = PassContext(profile=profile, backend=be)
        for pm in get_pipeline("fusion"):
            pm.run(copy, ctx)
    return copy


def _prune(graph: Graph, c: dict, profile, legality: bool, max_drop: float | None,
           reports: dict) -> str:
    be = c["backend"]
    if be not in profile.backends:
        return f"illegal: {be} does not serve {profile.name}"
    if max_drop is not None and max_drop <= 0 and c["precision"] != "fp32":
        return "max_accuracy_drop = 0: only fp32 is lossless"
    rp = c.get("runtime_precision", "fp32")
    if rp != "fp32" and not (max_drop is not None and max_drop > 0):
        return (f"lossy: the {be} runtime {rp} hint needs an accepted loss "
                "(max_accuracy_drop > 0)")
    if not c["fusion"] and NATIVE_FUSION.get(be):
        return f"equivalent: {be} fuses natively, fusion off gives the same kernels"
    heavy = {n.op_type for n in graph} & {"Conv", "MatMul", "Gemm"}
    if c["precision"] in ("fp16", "bf16") and heavy and not any(
            half_kernels(resolve_config(c, profile), profile, op) for op in heavy):
        return (f"dominated: {be} has no half-precision Conv/MatMul kernels on "
                f"{profile.main_unit.name}; {c['precision']} runs as fp32 plus the Casts it "
                "inserts")
    if c["precision"] == "int4-weight" and not any(
            n.op_type in ("MatMul", "Gemm") and len(n.inputs) > 1 and n.inputs[1] is not None
            and n.inputs[1].const is not None for n in graph):
        return "equivalent: no MatMul/Gemm weight for int4-weight, same as fp32"
    if legality:
        if be not in reports:
            try:
                from targets.base import get_backend

                rep = get_backend(be).legality(graph, profile)
                reports[be] = "" if rep.ok else "illegal: " + "; ".join(
                    f"{k}: {v or f'{be} gave no reason (a bug in its legality)'}"
                    for k, v in list(rep.unsupported.items())[:3])
            except Exception as e:  # module missing or its SDK not installed
                reports[be] = (f"illegal: backend {be!r} is not available: "
                               f"{str(e) or type(e).__name__}")
        return reports[be]
    return ""


def compiled_graph(graph: Graph, config: Mapping[str, Any], profile,
                   bindings: Mapping[str, int] | None = None) -> Graph:
    """The graph `config` compiles, for the cost model: lowered to its precision
    (`lower_graph`, placeholder ranges at `bindings`), then fused when fusion is on
    (`prepare_graph`). An fp32 configuration without fusion is `graph` itself (no copy)."""
    fused = config.get("fusion", True)
    if config.get("precision", "fp32") == "fp32":
        return prepare_graph(graph, config, profile) if fused else graph
    g = lower_graph(graph, config, profile, bindings=bindings)
    return prepare_graph(g, config, profile, in_place=True) if fused else g


def _costed_graph(graph: Graph, c: dict, profile, bindings) -> tuple[Graph, str] | str:
    """(`compiled_graph`, a note); a string where the lowering says the configuration cannot
    be built (the pruning reason)."""
    try:
        return compiled_graph(graph, c, profile, bindings), ""
    except ConstraintError as e:
        return f"illegal: {e}"
    except Exception as e:  # a pass failing here must not fail the search: cost it simulated
        return graph, (f"lowering or fusion for {c['backend']} {c['precision']} failed "
                       f"({type(e).__name__}: {e}); the precision is simulated on the float "
                       "graph")


def _dominated(a: Candidate, b: Candidate) -> bool:
    """b dominates a in (latency, memory, accuracy risk)."""
    pa, pb = a.prediction, b.prediction
    va = (pa.latency_ms, pa.memory_mb, risk(a.config))
    vb = (pb.latency_ms, pb.memory_mb, risk(b.config))
    return all(y <= x for x, y in zip(va, vb)) and vb != va


def search(graph: Graph, profile, *, objective: str = "latency",
           constraints: Mapping[str, Any] | None = None,
           bindings: Mapping[str, int] | None = None, backends: Sequence[str] | None = None,
           precisions: Sequence[str] | None = None, calibration: Mapping[str, Any] | None = None,
           legality: bool = True, top: int = 5) -> SearchResult:
    """The best configuration for `objective` under `constraints`, runners-up and the Pareto
    front. `calibration` maps backend -> Calibration/Params (default: the stored files)."""
    if objective not in OBJECTIVES:
        raise ConstraintError(f"unknown objective {objective!r}; choose "
                              f"{' | '.join(OBJECTIVES)}")
    cons = dict(constraints or {})
    max_drop = cons.get("max_accuracy_drop")
    reports: dict[str, str] = {}
    costed: dict[tuple, tuple[Graph, str] | str] = {}
    live, pruned = [], []
    space = config_space(profile, backends, precisions)
    if not space:
        raise ConstraintError(_empty_space(profile, backends, precisions))
    for c in space:
        why = _prune(graph, c, profile, legality, max_drop, reports)
        key = (c["backend"], c["precision"], c["fusion"])
        if not why and key not in costed:
            costed[key] = _costed_graph(graph, c, profile, bindings)
        if not why and isinstance(costed[key], str):
            why = costed[key]
        if why:
            pruned.append(Candidate(c, pruned=why))
            continue
        g, note = costed[key]
        cal = (calibration or {}).get(c["backend"])
        p = predict(g, c, profile, bindings=bindings, calibration=cal)
        if note:
            p.assumptions.append(note)
        if max_drop is not None:
            c = {**c, "max_accuracy_drop": max_drop}
        live.append(Candidate(c, p))
    if not live:  # every candidate was pruned, and every pruning names its reason
        why = sorted({c.pruned for c in pruned}, key=lambda w: (not w.startswith("illegal"), w))
        raise ConstraintError(f"no legal configuration for {profile.name}: " + "; ".join(
            why[:4]))
    feasible = list(live)
    for key, metric, what in (("max_latency_ms", "latency_ms", "latency"),
                              ("max_memory_mb", "memory_mb", "memory")):
        if cons.get(key) is None:
            continue
        best = min(live, key=lambda c: getattr(c.prediction, metric))
        low = getattr(best.prediction, metric)
        if low > cons[key]:
            raise ConstraintError(
                f"{key}={cons[key]:g} cannot be met on {profile.name}: the smallest "
                f"predicted {what} over {len(live)} configurations is {low:.4g} "
                f"({'ms' if what == 'latency' else 'MB'}, with {best.config['backend']} "
                f"{best.config['precision']}); relax the constraint to at least {low:.4g}")
        feasible = [c for c in feasible if getattr(c.prediction, metric) <= cons[key]]
    if not feasible:
        raise ConstraintError(
            "max_latency_ms and max_memory_mb cannot both be met on "
            f"{profile.name}; each alone can: smallest latency "
            f"{min(c.prediction.latency_ms for c in live):.4g} ms, smallest memory "
            f"{min(c.prediction.memory_mb for c in live):.4g} MB")
    metric = OBJECTIVES[objective]

    def rank(c: Candidate):
        p = c.prediction
        cfg = c.config  # on a tie, the configuration closest to compile()'s defaults
        return (getattr(p, metric), p.latency_ms, p.memory_mb, not cfg["fusion"],
                cfg["threads"] != 0, risk(cfg),
                profile.backends.index(cfg["backend"]), c.key)  # _prune kept served ones

    feasible.sort(key=rank)
    pareto = sorted([c for c in feasible if not any(_dominated(c, o) for o in feasible)],
                    key=rank)
    return SearchResult(feasible[0], feasible[1:1 + top], pareto, feasible, pruned, objective)
