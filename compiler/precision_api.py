"""`apply_precision`: the one entry point compile() calls for precision (see passes/precision).

precision:
- "fp32": nothing changes;
- "fp16" / "bf16": every Conv/MatMul/Gemm runs in half precision (Cast in, weights converted,
  Cast out; round trips between consecutive layers folded);
- "int4-weight": MatMul/Gemm weights block-wise INT4 (DequantizeLinear block_size at opset >= 21,
  else com.microsoft MatMulNBits), activations float;
- "int8": every Conv/MatMul/Gemm INT8 Q/DQ (what an INT8-only NPU needs), no budget;
- "mixed": INT8 where the target's int8 kernel is predicted faster and the accuracy budget
  allows; the other layers in the target's best float precision (fp16 where the main unit has
  faster fp16, else fp32).

constraints (all optional):
- "min_sqnr_db" (default 25): output SQNR vs FP32 on the calibration set the mixed model must
  keep; as a budget on summed relative noise, 10^(-min_sqnr_db/10);
- "max_metric_loss" (default 0.01): the budget when a `metric(reference, outputs) -> loss`
  callback is given (lists of output dicts, one per sample; lower is better);
- "calibration_method": "auto" (default) | "minmax" | "percentile" | "entropy" | "mse";
  "percentile" (99.999). "auto" collects one histogram per tensor and keeps the ranges of
  minmax, percentile and mse; the one whose ranges give the quantized layers the least own
  output noise in total (all three measured in one session, `passes.sensitivity.pick_ranges`)
  is used, and the report's calibration entry says which and why;
- "sensitivity_samples" (default 32): calibration samples kept for sensitivity and checks;
- "keep_float": node names never quantized (int8 and mixed); "int4_block_size": 32 (default) |
  64 | 128;
- "sensitivity" (default True): mixed ranks layers by the noise each adds alone (all layers in
  one session, `passes.sensitivity.local_sensitivity`) and measures whole mixed graphs only to
  find where the budget runs out (at most "max_boundary_checks", default 6, see
  `passes.precision.search_prefix`); the report's budget says how much of it the result uses.
  False skips the sensitivity search and its end-to-end checks: int8 goes on every layer
  predicted faster in int8 (a speed-only assignment; the configuration search lowers its
  preview of a mixed graph this way, without the user's calibration data);
- "bias_correction" (default True): fold the mean output shift that weight quantization causes
  into each quantized layer's bias (passes.bias_correction), from per-channel input means taken
  in the calibration run; applied in the sensitivity copies too, so the budget sees it. For
  int4-weight it needs calibration data and covers MatMul/Gemm (without calibration: off);
- "batch": the deployment batch size the speed proxy judges layers at (default: the batch of
  the calibration samples; assumes the first input's leading dim is the batch).

`calibration`: an iterable of feed dicts, a folder / file path for `compiler.calib_data`, or
statistics already collected (`passes.calibration.CalibrationResult`, e.g. from `collect` to
lower one graph for several targets, or `placeholder_calibration` to lower the structure only).
Statistics without samples allow no sensitivity search and no end-to-end measurement.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from compiler.errors import ConstraintError
from compiler.ir import Graph, Node
from passes import quantize as qz
from passes import requantize as rq
from passes.bias_correction import input_mean_axis
from passes.calibration import CalibrationResult, collect
from passes.integer_only import activation_values, quantize_all_activations
from passes.opset_policy import ensure_precision_opset
from passes.precision import (
    RooflineProxy,
    candidate_layers,
    layer_info,
    order_layers,
    search_prefix,
)
from passes.sensitivity import Sensitivity, evaluate, local_sensitivity, pick_ranges

__all__ = ["apply_precision", "backend_name", "PRECISIONS", "DEFAULTS", "top1_disagreement"]

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "mixed", "int4-weight", "fixed")
DEFAULTS = {"min_sqnr_db": 25.0, "max_metric_loss": 0.01, "calibration_method": "auto",
            "percentile": 99.999, "sensitivity_samples": 32, "int4_block_size": 32,
            "bias_correction": True, "sensitivity": True, "max_boundary_checks": 6}


def _name_nodes(graph: Graph) -> None:
    seen: set[str] = set()
    for n in graph:
        if not n.name or n.name in seen:
            n.name = graph.unique_name(n.op_type)
        seen.add(n.name)


def backend_name(backend: Any) -> str:
    """The backend's registry name for a Backend, a name or None (ONNX Runtime)."""
    if backend is None:
        return "onnxruntime"
    return backend if isinstance(backend, str) else getattr(backend, "name", "onnxruntime")


def _float_precision(profile, precision: str) -> str:
    """The float precision non-int8 layers get in "mixed": fp16 where it computes faster."""
    if precision == "mixed" and "fp16" in profile.precisions and \
            profile.peak("fp16") > 1.5 * max(profile.peak("fp32"), 1.0):
        return "fp16"
    return "fp32"


def _as_samples(calibration: Any, graph: Graph) -> Iterable[Mapping] | CalibrationResult:
    if isinstance(calibration, (str, os.PathLike)):
        from compiler.calib_data import load_calibration

        return load_calibration(calibration, graph)
    if isinstance(calibration, Mapping):
        return [calibration]
    return calibration


def _kept_float_ops(graph: Graph) -> dict[str, int]:
    c = Counter(n.op_type for n in graph if n.op_type in qz.KEEP_FLOAT)
    return dict(sorted(c.items()))


def top1_disagreement(reference: list[dict], outputs: list[dict]) -> float:
    """Fraction of samples whose arg-max class (first output, last axis) changed.

    The default accuracy metric when no labelled metric is given: a model's top-1 accuracy
    cannot drop by more than the fraction of predictions that changed, so bounding this bounds
    the accuracy drop for classifiers without needing labels.
    """
    changed = total = 0
    for ref, out in zip(reference, outputs):
        name = next(iter(ref))
        a, b = np.asarray(ref[name]), np.asarray(out[name])
        a, b = a.reshape(-1, a.shape[-1]), b.reshape(-1, b.shape[-1])
        changed += int(np.sum(a.argmax(-1) != b.argmax(-1)))
        total += a.shape[0]
    return changed / max(total, 1)


def apply_precision(graph: Graph, profile, backend, precision: str, calibration,
                    constraints: dict | None, *, metric: Callable | None = None,
                    proxy: Any = None) -> dict:
    """Assign and lower per-layer precision in place; returns the manifest's report.

    `proxy`: a speed proxy with `layer_time(layer, precision, profile) -> (s, why)` (default:
    the documented `passes.precision.RooflineProxy`). compile() and the search pass the cost
    model's, `compiler.cost.layer_proxy.speed_proxy(graph, profile, backend)` (calibrated
    where a calibration file exists); the cost model sits above this module, so it is handed
    in rather than imported.
    """
    if precision not in PRECISIONS:
        raise ConstraintError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    opts = {**DEFAULTS, **(constraints or {})}
    be = backend_name(backend)
    ensure_precision_opset(graph, precision)  # Q/DQ axis, bf16 Cast: passes/opset_policy.py
    _name_nodes(graph)
    cands = candidate_layers(graph)
    report: dict[str, Any] = {"precision": precision, "target": profile.name, "backend": be,
                              "layers": {}, "budget": {}, "totals": {},
                              "kept_float_ops": _kept_float_ops(graph)}
    layers = report["layers"]
    if precision == "fp32" or not cands:
        for n in cands:
            layers[n.name] = {"op": n.op_type, "precision": "fp32", "sensitivity": None,
                              "reason": "fp32 requested"}
        report["totals"] = {"layers": len(cands), "fp32": len(cands)}
        return report
    if precision in ("fp16", "bf16"):  # the whole graph, schema-driven (passes.fp16)
        from passes.fp16 import to_fp16

        graph.swap_contents(to_fp16(graph, dtype=precision))
        half = {n.name for n in graph.all_nodes() if n.meta.get("precision") == precision}
        for n in cands:
            ok = n.name in half
            layers[n.name] = {"op": n.op_type, "precision": precision if ok else "fp32",
                              "sensitivity": None, "reason": f"{precision} requested" if ok
                              else f"the op's ONNX schema at this opset has no {precision} type"}
        done = sum(1 for n in cands if n.name in half)
        report["totals"] = {"layers": len(cands), precision: done, "fp32": len(cands) - done}
        return report
    if precision == "int4-weight":
        if graph.opset_imports.get("", 0) < 21 and be not in ("onnxruntime", "openvino"):
            _upgrade_opset(graph, 21)  # MatMulNBits is ORT/OpenVINO only: use standard DQ
            cands = candidate_layers(graph)
        means = {}
        if isinstance(calibration, CalibrationResult):
            means = calibration.means if opts["bias_correction"] else {}
        elif opts["bias_correction"] and calibration is not None:
            means = _input_means(graph, cands, _as_samples(calibration, graph))
        return _int4(graph, cands, opts, report, means)
    if calibration is None:
        raise ConstraintError(
            f"precision {precision!r} needs calibration data to set activation ranges: pass "
            "calibration= (an iterable of input dicts) or --calib DIR (.npy/.npz files)")
    if precision == "fixed":  # per-layer ap_fixed types for an FPGA dataflow design
        from passes.fixed_point import assign_fixed_point

        return assign_fixed_point(graph, _as_samples(calibration, graph), opts, metric)
    return _int8(graph, profile, be, precision, _as_samples(calibration, graph), opts, metric,
                 proxy or RooflineProxy(), cands, report)


def _upgrade_opset(graph: Graph, opset: int) -> None:
    """Convert the graph in place to `opset` with onnx's version converter."""
    import onnx

    from compiler.onnx_io import export_onnx, import_onnx

    try:
        model = onnx.version_converter.convert_version(export_onnx(graph), opset)
    except Exception as e:
        raise ConstraintError(
            f"int4-weight needs DequantizeLinear with block_size (opset {opset}); converting "
            f"the model from opset {graph.opset_imports.get('')} failed ({e}); choose the "
            "onnxruntime or openvino backend (MatMulNBits) or export at opset 21") from None
    model.ir_version = max(model.ir_version, 10)
    graph.swap_contents(import_onnx(model, base_dir=graph.model.base_dir))
    graph.model.ir_version = model.ir_version


def _mean_key(node: Node) -> tuple[str, int] | None:
    """(input tensor, axis) whose per-channel mean bias correction needs for `node`."""
    axis = input_mean_axis(node)
    v = node.inputs[0] if node.inputs else None
    if axis is None or v is None or qz.weight_input(node) is None:
        return None
    return v.name, axis


def _input_means(graph: Graph, cands: list[Node], samples: Iterable[Mapping]) -> dict:
    """Per-channel input means of the weight layers in `cands`, in one calibration run."""
    keys = [k for k in map(_mean_key, cands) if k is not None]
    return collect(graph, [], samples, keep=0, means=keys).means if keys else {}


def _int4(graph: Graph, cands: list[Node], opts: dict, report: dict,
          means: Mapping[tuple[str, int], np.ndarray]) -> dict:
    block = int(opts["int4_block_size"])
    if block not in (16, 32, 64, 128):
        raise ConstraintError(f"int4_block_size must be 16, 32, 64 or 128, not {block}")
    n4 = 0
    for n in list(cands):
        name, op = n.name, n.op_type
        key, rec = _mean_key(n), {}
        form = qz.lower_int4_weight(graph, n, block, input_mean=means.get(key), record=rec)
        if form is None:
            why = ("activations are float in int4-weight mode" if op == "Conv" or
                   qz.weight_input(n) is None else
                   f"weight's K is not a multiple of the block size {block}")
            report["layers"][name] = {"op": op, "precision": "fp32", "sensitivity": None,
                                      "reason": f"stays fp32: {why}"}
        else:
            n4 += 1
            report["layers"][name] = {"op": op, "precision": "int4-weight", "sensitivity": None,
                                      "reason": f"int4 weights, block {block}, as {form}",
                                      "bias_correction": rec or None}
    report["totals"] = {"layers": len(cands), "int4-weight": n4, "fp32": len(cands) - n4,
                        "block_size": block}
    return report


def _int8(graph: Graph, profile, be: str, precision: str, samples: Iterable[Mapping],
          opts: dict, metric, proxy, cands: list[Node], report: dict) -> dict:
    index = {n.name: i for i, n in enumerate(graph)}
    tensors = []
    for n in cands:
        tensors += [n.inputs[i].name for i in qz.activation_inputs(n)] + [n.outputs[0].name]
    # a device without float units holds every activation in int8 (passes.integer_only)
    int8_only = "fp32" not in profile.precisions and "fp16" not in profile.precisions
    if int8_only:
        tensors = list(dict.fromkeys(tensors + [v.name for v in activation_values(graph)]))
    method = opts["calibration_method"]
    kw = {"percentile": float(opts["percentile"])} if method in ("percentile", "auto") else {}
    key_of = {n.name: _mean_key(n) for n in cands} if opts["bias_correction"] else {}
    mean_keys = [k for k in key_of.values() if k is not None]
    if isinstance(samples, CalibrationResult):  # statistics collected before
        calib = samples
        missing = [t for t in tensors if t not in calib.ranges]
        if missing:
            raise ConstraintError(f"the calibration statistics have no range for {missing[:3]} "
                                  f"({len(missing)} tensors); collect them on this graph")
        if precision == "mixed" and opts["sensitivity"] and not calib.samples:
            raise ConstraintError("mixed's sensitivity search needs calibration samples; these "
                                  "statistics keep none (pass feeds, or sensitivity=False)")
    else:
        calib = collect(graph, tensors, samples, method, keep=int(opts["sensitivity_samples"]),
                        means=mean_keys, memory_options=opts, **kw)
    unit = profile.main_unit
    act_dtype = qz.T.INT8 if be == "tensorrt" or int8_only else qz.T.UINT8
    # 7-bit weights on an x86 CPU without VNNI: its int8 dot product (vpmaddubsw) sums u8*s8
    # pairs into int16 and saturates with full-range weights, whichever runtime calls it (ONNX
    # Runtime's MLAS does; a graph lowered for such a device must be safe in every runtime
    # that may run it there)
    reduce_range = unit.kind == "cpu" and "avx2" in unit.isa and not (
        {"avx512_vnni", "avx_vnni", "amx_int8"} & set(unit.isa))

    def make_lower(ranges: Mapping[str, tuple[float, float]]) -> Callable[[Graph, Node], dict]:
        def lower(g: Graph, node: Node) -> dict:
            key = _mean_key(node) if opts["bias_correction"] else None  # twins: same input
            return qz.lower_int8(g, node, ranges, act_dtype=act_dtype,
                                 symmetric_act=be == "tensorrt", reduce_range=reduce_range,
                                 input_mean=calib.means.get(key) if key else None)
        return lower

    fprec = _float_precision(profile, precision)

    scale = 1.0
    if opts.get("batch") and calib.samples:
        first = next(iter(calib.samples[0].values()))
        scale = float(opts["batch"]) / max(int(first.shape[0]) if first.ndim else 1, 1)
    infos = {n.name: layer_info(n, index[n.name], calib.shapes, scale) for n in cands}

    def deploy(g: Graph, int8: set[str]) -> tuple[dict, set, set]:
        """Lower `int8` layers of `g` and the rest to `fprec`, with the backend's rules: the
        graph the checks measure is the graph that ships. Returns (qparams, layers whose
        input / output got re-quantized)."""
        qparams: dict[str, dict] = {}
        for n in [x for x in g if x.name in int8]:
            info = lower(g, n)
            qparams[n.name] = {"activation_qparams": info["activations"]}
            if mean_keys:
                qparams[n.name]["bias_correction"] = info.get("bias_correction") or {
                    "corrected": False, "why": "no constant float weight (or no input mean)"}
        requantized, out_requantized = set(), set()
        if be == "onnxruntime" and int8 and fprec == "fp32":
            requantized = rq.requantize_float_inputs(g, set(infos) - int8, calib.ranges,
                                                     act_dtype)
            out_requantized = rq.requantize_int8_outputs(g, int8, calib.ranges, act_dtype)
            for n in [x for x in g if x.name in int8]:
                if qz.int32_bias_add(g, n):
                    qparams[n.name]["bias"] = "int32"
        if fprec != "fp32":
            for n in [x for x in g if x.name in set(infos) - int8]:
                qz.lower_float(g, n, fprec)
            qz.fold_cast_pairs(g)
        if int8_only:
            quantize_all_activations(g, calib.ranges, act_dtype)
        return qparams, requantized, out_requantized

    times, whys = {}, {}
    for name, info in infos.items():
        tf, _ = proxy.layer_time(info, fprec, profile)
        ti, why = proxy.layer_time(info, "int8", profile)
        times[name], whys[name] = (tf, ti), why
    gains = {k: t[0] - t[1] for k, t in times.items()}
    keep_float = set(opts.get("keep_float") or ())
    sens: dict[str, Sensitivity] = {}
    measured: dict[int, Sensitivity] = {}
    checks: list = []
    order: list[str] = []
    budget_info: dict[str, Any] = {}
    eligible = [k for k in infos if gains[k] > 0 and k not in keep_float]
    picked: dict[str, Sensitivity] = {}
    range_choice: dict[str, Any] = {}
    if calib.alternatives and calib.samples:
        int8_all = precision == "int8" or int8_only
        layers_q = [k for k in infos if k not in keep_float] if int8_all else eligible
        if layers_q and (int8_all or opts["sensitivity"]):
            best, totals, picked = pick_ranges(graph, layers_q, make_lower, calib)
            calib = dataclasses.replace(calib, ranges=calib.alternatives[best],
                                        method=f"auto: {best}")
            range_choice = {"picked": best, "summed_layer_noise": totals,
                            "why": "least summed output noise of the quantized layers, "
                                   "each quantized alone (one session)"}
    lower = make_lower(calib.ranges)
    if int8_only and keep_float & set(infos):
        raise ConstraintError(
            f"keep_float {sorted(keep_float & set(infos))[:3]} cannot be honoured: "
            f"{profile.name} computes int8 only; drop keep_float or choose a target with float "
            "units")
    if precision == "int8" or int8_only:
        chosen = [n.name for n in cands if n.name not in keep_float]
        budget_info = {"kind": "none", "why": "int8 requested" if precision == "int8" else
                       f"{profile.name} computes int8 only"}
    elif not opts["sensitivity"]:
        chosen = eligible
        budget_info = {"kind": "none", "why": "sensitivity off: int8 wherever predicted "
                       "faster, no accuracy budget applied"}
    else:
        sens = picked or local_sensitivity(graph, eligible, lower, calib)
        costs = {k: v.noise for k, v in sens.items()}
        if metric is not None:
            budget = float(opts["max_metric_loss"])
            budget_info = {"kind": "metric", "max_metric_loss": budget}
        else:
            budget = 10 ** (-float(opts["min_sqnr_db"]) / 10)
            budget_info = {"kind": "sqnr", "min_sqnr_db": float(opts["min_sqnr_db"]),
                           "max_relative_noise": budget}
        order = order_layers(costs, gains, index)
        from compiler.onnx_io import export_onnx, import_onnx

        base = export_onnx(graph)  # each measured copy re-reads it

        def measure(names) -> float:
            g = import_onnx(base, base_dir=graph.model.base_dir)
            deploy(g, set(names))
            s = measured[len(names)] = evaluate(g, calib, metric)
            return float(s.metric) if metric is not None else s.noise

        k, checks = search_prefix(order, costs, budget, measure,
                                  int(opts["max_boundary_checks"]))
        chosen = order[:k]
        budget_info["sensitivity"] = ("first order: each layer's own output noise, all layers "
                                      "in one session; end-to-end checks near the boundary")
        budget_info["checks"] = [{"layers": n, "measured": v} for n, v in checks]
    chosen_set = set(chosen)
    qparams, requantized, out_requantized = deploy(graph, chosen_set)
    final = Sensitivity(0.0, math.inf, 1.0)
    if chosen and calib.samples:  # the deployed graph is the copy measured for that prefix
        final = measured.get(len(chosen)) or evaluate(graph, calib, metric)
    budget_info["measured"] = final.to_dict() if calib.samples or not chosen else None
    if budget_info.get("kind") in ("sqnr", "metric") and budget_info["measured"]:
        used = final.metric if budget_info["kind"] == "metric" else final.noise
        limit = budget_info.get("max_metric_loss", budget_info.get("max_relative_noise"))
        budget_info["used"] = float(used) / limit if limit else (0.0 if not used else math.inf)
    failed = {n for n, v in checks if n > len(chosen)}
    dropped = set(order[len(chosen):min(failed)]) if failed else set()
    for name, info in infos.items():
        tf, ti = times[name]
        s = sens.get(name)
        entry = {"op": info.op_type, **info.to_dict(),
                 "predicted_ms": {fprec: tf * 1e3, "int8": ti * 1e3 if math.isfinite(ti)
                                  else None},
                 "sensitivity": s.to_dict() if s else None}
        if name in chosen_set:
            entry["precision"] = "int8"
            entry["reason"] = ("int8 requested" if precision == "int8" else
                               f"int8: predicted {tf / ti:.2f}x faster, within the budget"
                               if math.isfinite(ti) and ti > 0 else "int8")
            if name in out_requantized:
                entry["output_requantized"] = ("its result is quantized so ONNX Runtime runs "
                                               "it as QLinearConv")
        else:
            entry["precision"] = fprec
            if name in requantized:
                entry["input_requantized"] = ("its input is quantized so ONNX Runtime fuses the "
                                              "int8 layer before it into an integer kernel")
            if name in keep_float:
                why = "kept float by the user (keep_float)"
            elif gains[name] <= 0:
                why = (f"int8 not faster on {profile.name}: " + (whys[name] or (
                    "the Q/DQ overhead exceeds the int8 compute saving (memory-bound or "
                    "tiny layer)")))
            elif name in dropped:
                why = ("the end-to-end check on the calibration set exceeded the budget with "
                       "it and the layers before it in the order")
            else:
                why = "quantizing it would exceed the accuracy budget"
            entry["reason"] = f"stays {fprec}: {why}"
        entry.update(qparams.get(name, {}))
        report["layers"][name] = entry
    t_float = sum(t[0] for t in times.values())
    t_mixed = sum(times[k][1] if k in chosen_set else times[k][0] for k in times)
    report["budget"] = budget_info
    report["calibration"] = {"method": calib.method, "samples": calib.n_samples,
                             "kept_for_sensitivity": len(calib.samples), **range_choice}
    report["totals"] = {"layers": len(infos), "int8": len(chosen_set),
                        fprec: len(infos) - len(chosen_set),
                        "predicted_speedup_quantizable_layers":
                            t_float / t_mixed if t_mixed > 0 else 1.0,
                        "measured_sqnr_db": (budget_info["measured"] or {}).get("sqnr_db"),
                        "measured_cosine": final.cosine if budget_info["measured"] else None,
                        "proxy": type(proxy).__name__ + (
                            f" ({proxy.source})" if getattr(proxy, "source", "") else ""),
                        "bias_corrected": sum(
                            1 for q in qparams.values()
                            if (q.get("bias_correction") or {}).get("corrected"))}
    return report

