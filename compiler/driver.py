"""compile() and optimize(): from a model and a device name to a verified bundle.

Flow: load the model into the IR → run the pipeline for the target → ask the backend whether
every node can run (legality) → emit and build into a staging folder → verify against ONNX
Runtime on the original model when this machine can run the result → write the manifest and
move the bundle into place in one rename. Any CompileError on the way leaves nothing behind.
"""

from __future__ import annotations

import hashlib
import logging
import os
import platform
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from compiler import verify as verify_mod
from compiler.artifact import Artifact, commit_bundle, staging_dir, write_manifest
from compiler.diagnose import StepFailed, blame
from compiler.errors import (
    CompileError,
    ConstraintError,
    RuntimeRefusedError,
    UnknownBackendError,
    VerificationError,
)
from compiler.inputs import check_calibration, check_shapes, check_signature, dim_bindings
from compiler.ir import Graph
from compiler.onnx_io import import_onnx, load_model_proto
from compiler.pipeline import (
    DEFAULT_PIPELINE,
    UNFUSED_PIPELINE,
    PassManager,
    get_pipeline,
    split_at_fusion,
)
from compiler.precision_api import PRECISIONS
from compiler.resources import CAP_OPTION
from passes.base import Pass, PassContext, get_pass
from passes.normalize import normalize
from passes.opset_policy import describe as describe_opset

__all__ = ["compile", "optimize", "load_graph", "prune"]

log = logging.getLogger("edgec")


class _Source:
    """The user's model, read once: the IR, and what the reference runtime needs."""

    def __init__(self, model: Any, example_inputs: Any = None) -> None:
        self.path: str | None = None
        if _is_torch_module(model):
            from compiler.torch_io import torch_to_onnx

            if example_inputs is None:
                raise CompileError(
                    "a torch.nn.Module needs example_inputs= (a tensor, tuple or dict) to export")
            model = torch_to_onnx(model, example_inputs)
        if isinstance(model, Graph):
            self.graph = model
            self.proto = None
            self.base_dir = model.model.base_dir
        else:
            proto, base_dir = load_model_proto(model)
            if isinstance(model, (str, os.PathLike)):
                self.path = str(model)
            self.proto, self.base_dir = proto, base_dir
            self.graph = import_onnx(proto, base_dir=base_dir)
            normalize(self.graph)  # one form for every exporter's (passes/normalize.py)
        self.sha256 = self._hash()

    def _hash(self) -> str:
        h = hashlib.sha256()
        if self.path is not None:
            with open(self.path, "rb") as f:
                while block := f.read(16 << 20):
                    h.update(block)
        elif self.proto is not None:
            h.update(self.proto.SerializeToString())
        return h.hexdigest()

    def reference(self) -> str | onnx.ModelProto:
        """What ONNX Runtime loads as the reference (a path keeps external data reachable)."""
        if self.path is not None:
            return self.path
        if self.proto is not None:
            return self.proto
        from compiler.onnx_io import export_onnx

        return export_onnx(self.graph)


def _is_torch_module(model: Any) -> bool:
    mod = sys.modules.get("torch")
    return mod is not None and isinstance(model, mod.nn.Module)


def load_graph(model: Any, example_inputs: Any = None) -> Graph:
    """The IR for a path, bytes, ModelProto, Graph or torch.nn.Module."""
    return _Source(model, example_inputs).graph


def _passes(passes: Sequence[str | Pass] | None, pipeline: str | None) -> list[PassManager]:
    if passes is not None:
        return [PassManager([p if isinstance(p, Pass) else get_pass(p) for p in passes])]
    return get_pipeline(pipeline or DEFAULT_PIPELINE)


def optimize(model: Any, pipeline: str | None = "simplify", *,
             passes: Sequence[str | Pass] | None = None, target: str = "host",
             backend: str | None = None, shapes: Mapping[str, Sequence[int]] | None = None
             ) -> Graph:
    """Run a named pipeline (or explicit passes) for `target` without building anything."""
    from compiler.cost.layer_proxy import speed_proxy
    from targets.base import get_backend
    from targets.devices import get_profile

    profile = get_profile(target)
    graph = load_graph(model)
    be = get_backend(backend or profile.backends[0])
    ctx = PassContext(profile=profile, backend=be,
                      shapes={k: tuple(v) for k, v in (shapes or {}).items()},
                      speed_proxy=speed_proxy)
    for pm in _passes(passes, pipeline):
        pm.run(graph, ctx)
    return graph


def prune(model: Any, ratio: Any = 0.3, *, calibration: Iterable[Mapping] | None = None,
          target: str = "host", metric=None, shapes: Mapping[str, Any] | None = None,
          return_report: bool = False) -> Graph | tuple[Graph, dict[str, Any]]:
    """The simplified, pruned graph IR of `model` for `target` (nothing is built).

    `ratio`: as compile's `pruning=` (a FLOPs fraction, "auto" or a mapping). With
    `return_report`, also the report compile() puts under manifest["pruning"]."""
    from compiler.prune_api import apply_pruning
    from targets.devices import get_profile

    profile = get_profile(target)
    source = _Source(model)
    graph = optimize(source.graph, "simplify", target=target,
                     shapes={k: tuple(v) for k, v in (shapes or {}).items()})
    if calibration is not None and isinstance(calibration, (str, bytes)):
        from compiler.calib_data import load_calibration

        calibration = load_calibration(calibration, graph)
    report, _ = apply_pruning(graph, source, profile, ratio, calibration, metric, shapes)
    return (graph, report) if return_report else graph


def _check_backend(profile, name: str) -> str:
    if name not in profile.backends:
        raise UnknownBackendError(f"backend {name!r} does not serve target {profile.name!r}; "
                                  f"it supports {', '.join(profile.backends)}")
    return name


def compile(model: Any, target: str = "host", *, backend: str | None = None,
            precision: str | None = None, calibration: Iterable[Mapping[str, Any]] | None = None,
            constraints: Mapping[str, Any] | None = None,
            passes: Sequence[str | Pass] | None = None, out_dir: str | os.PathLike | None = None,
            verify: bool = True, example_inputs: Any = None,
            shapes: Mapping[str, Sequence[int]] | None = None, pipeline: str | None = None,
            options: Mapping[str, Any] | None = None,
            metric: Callable[[Any, Any], float] | None = None, pruning: Any = None) -> Artifact:
    """Compile `model` for the device `target` into a verified, deployable Artifact.

    `model`: a path, bytes, ModelProto, Graph or torch.nn.Module (with `example_inputs`).
    `shapes`: static sizes for inputs with symbolic dims, e.g. {"pixel_values": (1,3,224,224)}.
    `options`: backend options (threads, tuning trials, DLA core, ...).
    `precision`: fp32 | fp16 | bf16 (whole graph) | int8 | mixed (per layer, from
    `calibration`: an iterable of feed dicts or a folder of .npy/.npz) | int4-weight.
    `pruning`: a FLOPs fraction to remove, "auto" or a mapping (compiler.prune_api); the
    pruned graph is the bundle's verification reference, manifest["pruning"] the report.
    `constraints`: {"max_accuracy_drop": 0.01} (with `metric(reference, outputs) -> loss`),
    {"min_sqnr_db": 25}, {"max_latency_ms": ..., "max_memory_mb": ..., "objective": ...}.
    Without `backend` (or with "auto") the cost-model search picks the backend, and the
    precision too when it is not given: fp32 unless `calibration` or `max_accuracy_drop`
    accepts a loss. The manifest records the runners-up under "search". `Artifact.predicted`
    is filled for every compile.
    """
    from compiler.cost.layer_proxy import speed_proxy
    from targets.base import BuildConfig, get_backend
    from targets.devices import get_profile

    t0 = time.perf_counter()
    profile = get_profile(target)
    shapes = {k: tuple(int(d) for d in v) for k, v in (shapes or {}).items()}
    source = _Source(model, example_inputs)
    graph = source.graph
    source_opset = graph.opset_imports.get("")
    check_signature(graph, source.proto)
    check_shapes(graph, shapes)
    original = source.reference()  # before any pass (a Graph source is changed in place)
    search_result = None
    options = dict(options or {})
    if backend == "auto":
        backend = None
    if backend is not None:
        _check_backend(profile, backend)
    budget = (constraints or {}).get("max_accuracy_drop")
    if precision is not None and precision not in PRECISIONS:
        raise ConstraintError(
            f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    _check_precision(profile, precision)
    calibration = _calibration(calibration, graph)
    check_calibration(calibration, graph)
    # Verification's inputs are chosen before anything is built: a model ONNX Runtime refuses
    # stops here, and their sizes bind the symbolic dims the search and prediction cost.
    plan = None
    if verify:
        feeds = None if _is_torch_module(model) else verify_mod.first_feeds(example_inputs)
        plan = verify_mod.plan(original, graph, feeds or verify_mod.first_feeds(calibration),
                               shapes, options)
    bindings, bound_by = dim_bindings(graph, shapes, plan)
    if backend is None or (precision is None and (calibration is not None or budget)):
        search_result = _search(graph, profile, backend, precision, constraints, bindings,
                                calibration is not None)
        choice = search_result.choice.config
        backend, precision = choice["backend"], choice["precision"]
        if choice.get("threads"):
            options.setdefault("threads", choice["threads"])
        if choice.get("runtime_precision"):
            options.setdefault("runtime_precision", choice["runtime_precision"])
        if not choice.get("fusion", True) and passes is None and pipeline is None:
            pipeline = UNFUSED_PIPELINE
            if backend == "onnxruntime":
                options.setdefault("graph_optimization_level", "basic")
    precision = precision or "fp32"
    _check_precision(profile, precision)
    be, why = get_backend(backend), "chosen by the user"
    runtime = options.get("runtime_precision", "fp32")
    if runtime not in be.runtime_precisions(profile):
        raise ConstraintError(
            f"{be.name} offers runtime precision {', '.join(be.runtime_precisions(profile))} "
            f"on {profile.name}, not {runtime!r} (the device has no native {runtime})")
    if search_result is not None:
        why = (f"chosen by the cost-model search (objective: {search_result.objective}; "
               f"{len(search_result.candidates)} configurations predicted, runners-up in "
               "manifest['search'])")
    ctx = PassContext(profile=profile, backend=be, shapes=shapes, options=options,
                      speed_proxy=speed_proxy)
    config = BuildConfig(precision=precision, options=options, shapes=shapes,
                         allow_fallback=bool((constraints or {}).get("allow_fallback", True)),
                         samples=tuple(list(calibration or ())[:4])
                         if isinstance(calibration, (list, tuple)) else ())
    pruned: dict[str, Any] = {"reference": None, "report": None}

    def prune(g: Graph) -> None:  # on the simplified graph, before precision and fusion
        from compiler.prune_api import apply_pruning

        pruned["report"], pruned["reference"] = apply_pruning(
            g, source, profile, pruning, calibration, metric, shapes, constraints)

    def lower(g: Graph, after=None) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
        return _lower(g, ctx, _passes(passes, pipeline), precision, calibration, constraints,
                      metric, prune if pruning is not None else None, after)

    def fresh() -> Graph:
        return import_onnx(original, base_dir=source.base_dir)

    def diagnosed(error: BaseException, step: str) -> Exception:
        if step == "precision" and plan is None:  # calibration runs the model in ONNX Runtime
            verify_mod.Reference(original)
        return blame(error, step, be=be, profile=profile, config=config, fresh=fresh,
                     replay=lambda g, after: lower(g, after),
                     feeds=plan.feeds if plan is not None else None)

    def guarded(step: str, run: Callable[[], Any]) -> Any:
        """`run()`, with a runtime's error (or its refusal) diagnosed as coming from `step`."""
        try:
            return run()
        except RuntimeRefusedError as e:
            raise diagnosed(e, step) from None
        except (CompileError, MemoryError):
            raise
        except Exception as e:
            raise diagnosed(e, step) from None

    try:
        records, precision_report = lower(graph)
    except StepFailed as e:
        raise diagnosed(e.error, e.step) from None
    pruning_report = pruned["report"]
    if pruned["reference"] is not None and plan is not None:  # the pruned graph is the reference
        plan = verify_mod.plan(pruned["reference"].reference(), graph, plan.feeds, shapes,
                               options) if plan.feeds is not None else plan
    report = guarded("legality", lambda: be.legality(graph, profile, config))
    report.check(config.allow_fallback)
    prediction = _predict(graph, be.name, precision, records, config, profile, bindings)
    prediction.assumptions.append(bound_by)

    stage = staging_dir(out_dir)
    try:
        files = guarded("emit", lambda: be.emit(graph, profile, config, str(stage))
                        + be.build(str(stage), profile, config))
        built = be.predicted(str(stage))
        if built:
            prediction.assumptions.append(built.pop("source"))
        extra = be.manifest_entries(str(stage))
        _write_readme(stage, profile, be, files)
        manifest: dict[str, Any] = {
            "source": {"sha256": source.sha256, "path": source.path,
                       "inputs": _signature(graph.inputs), "outputs": _signature(graph.outputs)},
            "target": profile.name,
            "backend": be.name,
            "backend_reason": why,
            "config": {"backend": be.name, "precision": precision, "runtime_precision": runtime,
                       "options": config.options, "shapes": {k: list(v) for k, v in
                                                             shapes.items()},
                       "passes": [r["pass"] for r in records]},
            "constraints": dict(constraints or {}),
            "legality": report.to_dict(),
            "passes": records,
            "precision": precision_report,
            "opset": describe_opset(source_opset, graph.opset_imports.get(""), precision),
            "pruning": pruning_report,
            "predicted": {**prediction.summary(), **(built or {})},
            "prediction_assumptions": prediction.assumptions,
            "search": search_result.to_dict() if search_result is not None else None,
            "versions": _versions(be),
            **extra,
        }
        if plan is not None:
            # a half runtime hint on float layers is checked at that half's tolerance
            lossy = runtime if precision == "fp32" and runtime != "fp32" else precision
            rep = guarded("verification", lambda: _verify_bundle(plan, be, stage, manifest,
                                                                  profile, lossy))
            manifest["verification"] = rep.to_dict()
            if rep.passed is False:
                odd = [k for k, o in rep.outputs.items() if set(o) - {
                    "max_abs_error", "max_abs_reference", "cosine"}]
                raise VerificationError(
                    f"the compiled model's outputs differ from the original on {profile.name}/"
                    f"{be.name} ({rep.runner}): "
                    + (f"outputs {odd}: missing, of another shape, or NaN/Inf where the "
                       "reference has none (or the reverse); " if odd else "")
                    + f"max abs error {rep.max_abs_error:.3g} "
                    f"(reference max {rep.max_abs_reference:.3g}), cosine {rep.cosine:.6f}; "
                    f"tolerance {rep.tolerance}")
        manifest["compile_seconds"] = round(time.perf_counter() - t0, 3)
        manifest = write_manifest(stage, manifest)
        if out_dir is None:
            return Artifact(stage, manifest, temporary=True)
        final = commit_bundle(stage, out_dir)
        return Artifact(final, manifest)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


def _supported_precisions(profile) -> set[str]:
    """The profile's precisions, and mixed wherever int8 or fp16 layers can be mixed."""
    return set(profile.precisions) | (
        {"mixed"} if {"int8", "fp16"} & set(profile.precisions) else set())


def _check_precision(profile, precision: str | None) -> None:
    supported = _supported_precisions(profile)
    if precision is not None and precision not in supported:
        raise ConstraintError(
            f"{profile.name} does not support {precision}; it supports "
            f"{', '.join(profile.precisions)}")


def _lower(graph: Graph, ctx: PassContext, stages: list[PassManager], precision: str,
           calibration, constraints, metric, prune=None, after=None
           ) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """The pipeline with pruning and precision between its stages: after simplification and BN
    folding, before fusion (a fused op, FusedConv or attention, would hide the Q/DQ pattern
    that backends turn into integer kernels). `after(step, graph)` as in PassManager.run."""
    records: list[dict[str, Any]] = []
    before, rest = split_at_fusion(stages)
    for pm in before:
        pm.run(graph, ctx, after)
        records.extend(pm.summary())
    if prune is not None:
        prune(graph)
        if after is not None:
            after("pruning", graph)
    if precision != "fp32" and rest:
        pm = PassManager([get_pass("fusion", rule_sets=("conv_bn",))])
        pm.run(graph, ctx, after)
        records.extend(pm.summary())
    cons = dict(constraints or {})
    if CAP_OPTION in ctx.options:  # the memory cap reaches the calibration buffers
        cons[CAP_OPTION] = ctx.options[CAP_OPTION]
    try:
        precision_report = _apply_precision(graph, ctx.profile, ctx.backend, precision,
                                            calibration, cons, metric)
    except (CompileError, MemoryError):
        raise
    except Exception as e:  # a runtime's error (calibration runs ONNX Runtime): diagnosed
        raise StepFailed("precision", e) from e
    if after is not None and precision != "fp32":
        after("precision", graph)
    for pm in rest:
        pm.run(graph, ctx, after)
        records.extend(pm.summary())
    return records, precision_report


def _calibration(calibration: Any, graph: Graph) -> Any:
    """A re-iterable calibration set: it is read by the precision pass, then verification."""
    if isinstance(calibration, (str, os.PathLike)):
        from compiler.calib_data import load_calibration

        return load_calibration(calibration, graph)
    if calibration is not None and not isinstance(calibration, (list, tuple)):
        return list(calibration)
    return calibration


def _apply_precision(graph: Graph, profile, be, precision: str, calibration, constraints,
                     metric) -> dict[str, Any] | None:
    if precision == "fp32":
        return None
    from compiler.cost.layer_proxy import speed_proxy
    from compiler.precision_api import apply_precision, top1_disagreement

    cons = dict(constraints or {})
    for key in ("max_latency_ms", "max_memory_mb", "objective", "allow_fallback"):
        cons.pop(key, None)
    if "max_accuracy_drop" in cons:  # the public name of the metric budget
        cons["max_metric_loss"] = cons.pop("max_accuracy_drop")
        if metric is None:  # label-free: top-1 changes bound the accuracy drop
            metric = top1_disagreement
    report = apply_precision(graph, profile, be, precision, calibration, cons, metric=metric,
                             proxy=speed_proxy(graph, profile, be.name))
    if metric is top1_disagreement:
        report["metric"] = "top-1 disagreement with FP32 on the calibration set (no labels)"
    return report


def _search(graph: Graph, profile, backend: str | None, precision: str | None, constraints,
            bindings: dict[str, int], calibrated: bool):
    """The cost-model search over what the user left open. Precision, when not given: fp32
    only (lossless) unless the user accepts a loss, by calibration data (every precision) or
    `max_accuracy_drop` alone (the cast precisions, which need no calibration)."""
    from compiler.search import search

    cons = dict(constraints or {})
    objective = cons.pop("objective", "latency")
    cons.pop("allow_fallback", None)
    if precision:  # the user's choice: the budget is for the precision pass, not a filter
        precisions = [precision]
        cons.pop("max_accuracy_drop", None)
    elif calibrated:
        precisions = None
    elif cons.get("max_accuracy_drop"):
        precisions = [p for p in profile.precisions if p not in ("int8", "mixed")]
    else:
        precisions = ["fp32"]
    if not set(precisions or profile.precisions) & _supported_precisions(profile):
        raise ConstraintError(
            f"{profile.name} computes {', '.join(profile.precisions)} only and no precision was "
            f"chosen: pass precision='{profile.precisions[0]}' (CLI: --precision "
            f"{profile.precisions[0]}) with calibration data (--calib)")
    return search(graph, profile, objective=objective, constraints=cons,
                  bindings=bindings, backends=[backend] if backend else None,
                  precisions=precisions)


def _predict(graph: Graph, backend: str, precision: str, records, config, profile,
             bindings: dict[str, int]):
    from compiler.cost import predict

    fused = any(r["pass"] == "fusion" for r in records)
    if backend == "onnxruntime":  # ORT's own fusions and NCHWc layouts: at level "all" only
        from targets.onnxruntime import optimization_level

        fused = optimization_level(config.option("graph_optimization_level", "all")) >= 99
    return predict(graph, {"backend": backend, "precision": precision, "fusion": fused,
                           "threads": config.option("threads", 0),
                           "power_mode": config.option("power_mode"),
                           "runtime_precision": config.option("runtime_precision")},
                   profile, bindings=bindings)


def _verify_bundle(plan, be, stage: Path, manifest: dict, profile, precision: str):
    """Run the bundle here, or, for another device, the graph it carries (a stand-in runner
    such as ONNX Runtime on TensorRT's strongly typed ONNX), against the reference."""
    if be.can_run(profile):
        runner, what = be.load(str(stage), manifest), f"{be.name} on this machine"
    else:
        proxy = be.load_proxy(str(stage), manifest)
        if proxy is None:
            return verify_mod.VerifyReport(
                passed=None, skipped=f"{be.name} artifacts for {profile.name} cannot run on "
                "this machine and the backend has no stand-in runner")
        runner, what = proxy
    if plan.feeds is None:
        log.warning("verification skipped: %s", plan.origin)
    rep = plan.check(runner, precision)
    rep.runner = what
    return rep


def _signature(values) -> list[dict[str, Any]]:
    names = {n: k for k, n in onnx.TensorProto.DataType.items()}
    return [{"name": v.name, "dtype": names.get(v.dtype, v.dtype) if v.dtype else None,
             "shape": list(v.shape) if v.shape is not None else None}
            for v in values if v.const is None]


def _versions(be) -> dict[str, str]:
    import onnxruntime

    from compiler.version import __version__

    out = {"edgec": __version__, "python": platform.python_version(), "onnx": onnx.__version__,
           "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}
    try:
        out.update(be.versions())
    except CompileError:
        pass
    return out


def _write_readme(stage: Path, profile, be, files: list[str]) -> None:
    if (stage / "README.md").exists():  # the backend wrote device instructions itself
        return
    lines = [f"# edgec bundle: {profile.name} / {be.name}", "",
             "Files:", *[f"- `{f}`" for f in files], "",
             "`manifest.json` records the configuration, predictions, verification and the "
             "sha256 of every file (`edgec verify .` checks them)."]
    if "run.py" in files:
        lines += ["", "Run on the device: `python run.py [inputs.npz]`."]
    if "build_engine.py" in files:
        lines += ["", "On the Jetson: `python build_engine.py` (or `sh trtexec.sh`) builds "
                  "`model.engine`; `python build_engine.py --run` runs it."]
    if "run_tvm.py" in files:
        lines += ["", "On the device: `python run_tvm.py` loads `model.so` with TVM's runtime."]
    (stage / "README.md").write_text("\n".join(lines) + "\n")
