"""The `edgec` command: compile, inspect, verify, targets.

Exit codes: 0 ok; 2 bad input or user error (one line on stderr, no traceback); 1 internal
error. `--json` prints one JSON document on stdout; progress and warnings go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Any

from compiler.errors import CompileError, InternalCompilerError

__all__ = ["main"]


def _shape(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = text.rpartition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--shape wants NAME=1x3x224x224, got {text!r}")
    try:
        return name, tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shape dims must be integers: {text!r}") from None


def _option(text: str) -> tuple[str, Any]:
    key, sep, val = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"--option wants KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(val)
    except json.JSONDecodeError:
        return key, val


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # usage errors are user errors: exit 2, one line
        print(f"edgec: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="edgec", description="Compile neural networks for edge devices.")
    p.add_argument("--verbose", "-v", action="store_true", help="log progress to stderr")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    c = sub.add_parser("compile", help="compile a model for a target into a bundle folder")
    c.add_argument("model", help="path to an .onnx file")
    c.add_argument("--target", "-t", default="host", help="device name (see `edgec targets`)")
    c.add_argument("--out", "-o", required=True, help="bundle folder to write")
    c.add_argument("--backend", "-b", help="backend (default, or \"auto\": the cost-model "
                   "search picks it; precision too, lossless fp32 unless --calib or "
                   "--max-accuracy-drop accepts a loss)")
    c.add_argument("--precision", help="fp32 | fp16 | bf16 | int8 | mixed | int4-weight | "
                   "fixed (FPGA: per-layer ap_fixed)")
    c.add_argument("--pipeline", help="named pass pipeline (default: fusion)")
    c.add_argument("--passes", help="comma-separated pass names instead of a pipeline")
    c.add_argument("--shape", action="append", type=_shape, default=[],
                   help="static input shape, NAME=1x3x224x224 (repeatable)")
    c.add_argument("--option", action="append", type=_option, default=[],
                   help="backend option KEY=VALUE (repeatable)")
    c.add_argument("--calib", help="folder of .npy/.npz calibration inputs (int8, mixed, "
                   "fixed)")
    c.add_argument("--max-accuracy-drop", type=float,
                   help="budget for mixed precision: top-1 predictions that may change vs FP32 "
                   "on the calibration set (0.01 = 1%%)")
    c.add_argument("--min-sqnr-db", type=float,
                   help="budget for mixed precision: output SQNR vs FP32 (default 25 dB)")
    c.add_argument("--prune", help="structured pruning: fraction of FLOPs to remove (0.3) or "
                   "\"auto\"; with --calib: activation-aware and reconstructed")
    c.add_argument("--no-verify", action="store_true", help="skip the numeric check")
    c.add_argument("--json", action="store_true", help="print the manifest as JSON")

    i = sub.add_parser("inspect", help="op histogram, parameters, FLOPs, inputs/outputs; "
                       "for a bundle folder also its precision map and predictions")
    i.add_argument("model", help="an .onnx file or a bundle folder")
    i.add_argument("--shape", action="append", type=_shape, default=[])
    i.add_argument("--target", help="also predict latency/memory/energy on this device, with "
                   "the per-kernel breakdown (after the fusion pipeline)")
    i.add_argument("--backend", help="with --target: the backend to predict for (default: the "
                   "one the configuration search picks)")
    i.add_argument("--precision", default="fp32", help="with --target: the precision policy")
    i.add_argument("--json", action="store_true")

    v = sub.add_parser("verify", help="check a bundle's files and re-run its verification")
    v.add_argument("bundle")
    v.add_argument("--json", action="store_true")

    t = sub.add_parser("targets", help="list the device profiles")
    t.add_argument("--json", action="store_true")
    return p


def _compile(args) -> dict[str, Any]:
    from compiler import compile

    passes = [s.strip() for s in args.passes.split(",") if s.strip()] if args.passes else None
    constraints = {k: v for k, v in (("max_accuracy_drop", args.max_accuracy_drop),
                                     ("min_sqnr_db", args.min_sqnr_db)) if v is not None}
    art = compile(args.model, target=args.target, backend=args.backend,
                  precision=args.precision, passes=passes, pipeline=args.pipeline,
                  out_dir=args.out, verify=not args.no_verify, shapes=dict(args.shape),
                  options=dict(args.option), calibration=args.calib,
                  constraints=constraints or None, pruning=args.prune)
    m = art.manifest
    if not args.json:
        ver = m.get("verification") or {}
        status = {True: "passed", False: "FAILED", None: "skipped"}[ver.get("passed")]
        print(f"compiled for {m['target']} with {m['backend']} ({m['config']['precision']}) "
              f"-> {art.path}")
        print(f"verification: {status}"
              + (f" (max abs error {ver['max_abs_error']:.3g}, cosine {ver['cosine']:.6f})"
                 if ver.get("passed") is not None else f" ({ver.get('skipped', '')})"))
        if m.get("pruning"):
            pr = m["pruning"]
            print(f"pruning: {pr['flops_removed']:.1%} of FLOPs removed; vs unpruned: cosine "
                  f"{pr['distance'].get('cosine', float('nan')):.4f}")
    return m


def _inspect(args) -> dict[str, Any]:
    import os

    from compiler.driver import load_graph
    from compiler.inspect import format_bundle, format_prediction, format_summary, summarize
    from passes.shape_inference import infer_shapes

    if os.path.isdir(args.model):  # a bundle: what was chosen, per layer, and predicted
        from compiler.artifact import load

        art = load(args.model)
        doc = {"target": art.target, "backend": art.backend, "config": art.config,
               "precision": art.manifest.get("precision"), "predicted": art.predicted,
               "verification": art.verification}
        if not args.json:
            print(format_bundle(doc))
        return doc
    graph = load_graph(args.model)
    infer_shapes(graph)
    bindings = {}
    for name, dims in args.shape:
        v = next((x for x in graph.inputs if x.name == name), None)
        if v is None:
            raise CompileError(f"--shape names {name!r}, which is not a model input")
        for d, n in zip(v.shape or (), dims):
            if isinstance(d, str):
                bindings[d] = n
    if bindings:
        infer_shapes(graph)
    s = summarize(graph, bindings or None)
    if not args.json:
        print(format_summary(s))
    if args.target:
        s["prediction"] = _predict_for(args, graph, bindings)
        if not args.json:
            print(format_prediction(s["prediction"]))
    return s


def _predict_for(args, graph, bindings: dict[str, int]) -> dict[str, Any]:
    """The prediction for --target: for --backend as that backend compiles it (lowered to
    --precision, then fused), else for the configuration the search picks (what `edgec compile`
    without --backend builds)."""
    from compiler.cost import predict
    from compiler.driver import _check_backend
    from compiler.errors import ConstraintError
    from compiler.precision_api import PRECISIONS
    from compiler.search import compiled_graph, search
    from targets.devices import get_profile

    profile = get_profile(args.target)
    if args.precision not in PRECISIONS:
        raise ConstraintError(f"unknown precision {args.precision!r}; choose one of "
                              f"{', '.join(PRECISIONS)}")
    if args.backend:
        cfg = {"backend": _check_backend(profile, args.backend), "precision": args.precision,
               "fusion": True}
        pred = predict(compiled_graph(graph, cfg, profile, bindings), cfg, profile,
                       bindings=bindings or None)
    else:
        res = search(graph, profile, bindings=bindings, precisions=[args.precision])
        pred, cfg = res.choice.prediction, res.choice.config
    return {"target": profile.name, "backend": cfg["backend"], **pred.to_dict()}


def _verify(args) -> dict[str, Any]:
    from compiler.artifact import load

    art = load(args.bundle)
    out = {"bundle": str(art.path), "files_ok": True, "target": art.target,
           "backend": art.backend, "verification": art.verification}
    if not args.json:
        ver = art.verification or {}
        print(f"{art.path}: {len(art.files)} files match manifest.json; "
              f"built for {art.target}/{art.backend}; verification at build: "
              f"{ver.get('passed')}")
    return out


def _targets(args) -> Any:
    from targets.devices import format_table, list_profiles

    profiles = list_profiles()
    if not args.json:
        print(format_table(profiles))
    return [p.to_dict() for p in profiles]


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2)
        return int(e.code or 0)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        stream=sys.stderr, format="edgec: %(message)s")
    handler = {"compile": _compile, "inspect": _inspect, "verify": _verify,
               "targets": _targets}[args.cmd]
    try:
        result = handler(args)
    except CompileError as e:
        msg = " ".join(str(e).split())
        print(f"edgec: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except InternalCompilerError as e:  # edgec's bug, located: one line naming the pass
        msg = " ".join(str(e).split())
        print(f"edgec: internal error: {msg}", file=sys.stderr)
        return 1
    except Exception as e:  # an internal bug: say so, keep the traceback for the report
        import traceback

        traceback.print_exc()
        print(f"edgec: internal error ({type(e).__name__}); please report it", file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
