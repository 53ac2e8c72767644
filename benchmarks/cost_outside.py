"""Cost model on models no calibration saw: the outside corpus x {ONNX Runtime, OpenVINO} x
{fp32, int8}, predicted with the stored host calibration and measured here.

    python -m benchmarks cost_outside          # measures what is not cached, then scores
    python -m benchmarks.cost_outside --fresh  # re-measure (do this on a quiet machine)
    python -m benchmarks.cost_outside --cached # score what is measured, measure nothing

Each corpus model is loaded as compile() loads it (normalized), lowered for int8 with its
real-ish calibration input (compile()'s order: BN folded, Q/DQ, then fusion, as
`compiler.search.lower_graph` does), fused as the configuration compiles, then measured in a
fresh process (`compiler.cost.calibration.measure`, the statistic the fit uses: minimum over
runs) and predicted by `compiler.cost.predict` with the calibration file for (host, backend).
None of these models is in any calibration set, so every pair is held out. The zoo's
held-out numbers (leave-one-model-out, `python -m benchmarks cost`) are printed beside them.
Measurements are cached in .cache/cost-bench/outside/.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from benchmarks.common import print_table

ROOT = Path(__file__).resolve().parent.parent / ".cache" / "cost-bench" / "outside"
STAT = "min_ms"  # as benchmarks.cost fits and scores
PRECISIONS = ("fp32", "int8")


def _bindings(graph, feeds: dict) -> dict[str, int]:
    return {d: int(n) for v in graph.inputs if v.name in feeds and v.shape
            for d, n in zip(v.shape, np.shape(feeds[v.name])) if isinstance(d, str)}


def _case(name: str, backend: str, precision: str, profile, db: dict,
          cached: bool = False) -> dict | None:
    from compiler.cost import calibration as C
    from compiler.cost import predict
    from compiler.driver import load_graph
    from compiler.onnx_io import export_onnx
    from compiler.search import lower_graph, prepare_graph
    from compiler.zoo import outside
    from passes.shape_inference import infer_shapes

    cfg = {"backend": backend, "precision": precision, "fusion": True, "threads": 0}
    key = f"{name}-{backend}-{precision}"
    if cached and key not in db:
        return None
    path, fpath = ROOT / f"{key}.onnx", ROOT / f"{name}.npz"
    feeds = outside.feeds(name, 0)
    graph = load_graph(str(outside.path(name)))
    bind = _bindings(graph, feeds)
    if path.is_file():  # the graph as measured
        graph = load_graph(str(path))
        infer_shapes(graph)
    else:
        if precision != "fp32":
            graph = lower_graph(graph, cfg, profile, feeds=outside.feeds(name, 100))
        graph = prepare_graph(graph, cfg, profile, in_place=precision != "fp32")
    if key not in db:
        ROOT.mkdir(parents=True, exist_ok=True)
        export_onnx(graph, str(path))
        np.savez(fpath, **feeds)
        opts = {"threads": 0, "precision": precision, "opt_level": "all"}
        db[key] = C.measure(str(path), str(fpath), backend, opts, budget_s=0.8)
        print(f"  measured {key}: {db[key].get(STAT, db[key])}", flush=True)
    if STAT not in db[key]:
        return None
    pred = predict(graph, cfg, profile, bindings=bind)
    return {"model": name, "backend": backend, "precision": precision,
            "measured": db[key][STAT], "predicted": pred.latency_ms,
            "uncertainty": pred.uncertainty,
            "unknown_shapes": any("shapes unknown" in a for a in pred.assumptions)}


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main(argv: list[str] | None = None) -> None:
    from compiler.cost import calibration as C
    from compiler.zoo import outside
    from targets.devices import get_profile

    argv = sys.argv[1:] if argv is None else argv
    names = outside.available()
    if not names:
        print(outside.skip_reason())
        return
    profile = get_profile("host")
    backends = [b for b in C.available_host_backends() if b in ("onnxruntime", "openvino")]
    db_path = ROOT / "measurements.json"
    db = {} if "--fresh" in argv or not db_path.is_file() else json.loads(db_path.read_text())
    rows, skipped = [], []
    for name in names:
        for be in backends:
            for prec in PRECISIONS:
                try:
                    r = _case(name, be, prec, profile, db, "--cached" in argv)
                except Exception as e:  # a lowering or runtime the model does not support
                    r, why = None, f"{type(e).__name__}: {str(e).splitlines()[0][:90]}"
                else:
                    why = "not measured" if f"{name}-{be}-{prec}" not in db else \
                        "the runtime could not run it"
                db_path.parent.mkdir(parents=True, exist_ok=True)
                db_path.write_text(json.dumps(db, indent=0))
                if r is None:
                    skipped.append((name, be, prec, why))
                else:
                    rows.append(r)
    print_table(("model", "backend", "prec", "measured ms", "predicted ms", "error", "+-",
                 "shapes"),
                [(r["model"], r["backend"], r["precision"], f"{r['measured']:.3f}",
                  f"{r['predicted']:.3f}", f"{100 * (r['predicted'] / r['measured'] - 1):+.0f}%",
                  f"{100 * r['uncertainty']:.0f}%", "unknown" if r["unknown_shapes"] else "")
                 for r in rows])
    for s in skipped:
        print("  not scored:", *s)
    if len(rows) < 3:
        return
    p = np.array([r["predicted"] for r in rows])
    m = np.array([r["measured"] for r in rows])
    err = np.abs(p / m - 1)
    print(f"\noutside corpus (no calibration saw these models): {len(rows)} pairs over "
          f"{len(backends)} backends; Spearman {spearman(p, m):.3f}; within +-25%: "
          f"{100 * np.mean(err <= 0.25):.0f}%; within +-20%: {100 * np.mean(err <= 0.2):.0f}%;"
          f" median |error| {100 * np.median(err):.0f}%; inside the stated uncertainty: "
          f"{100 * np.mean(err <= np.array([r['uncertainty'] for r in rows])):.0f}%")
    for be in backends:
        sel = [i for i, r in enumerate(rows) if r["backend"] == be]
        if len(sel) >= 3:
            print(f"  {be}: Spearman {spearman(p[sel], m[sel]):.3f}, within +-25%: "
                  f"{100 * np.mean(err[sel] <= 0.25):.0f}%, median |error| "
                  f"{100 * np.median(err[sel]):.0f}%, median predicted/measured "
                  f"{np.median(p[sel] / m[sel]):.2f}")
    print("zoo, held out (leave-one-model-out, README / python -m benchmarks cost): "
          "Spearman 0.997, 89% within +-20%, median |error| 10%")


if __name__ == "__main__":
    main()
