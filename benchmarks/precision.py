"""Mixed precision on OpenVINO CPU: edgec "mixed" vs FP32 vs NNCF's default `nncf.quantize`.

For each model: the FP32 ONNX, edgec's mixed-INT8 Q/DQ graph (host profile, openvino backend)
and NNCF's default post-training quantization of the same model with the same calibration
samples, all compiled by OpenVINO for CPU with the properties edgec's backend deploys (precision
hint f32 for FP32 and for the float layers of both quantized models; "fp32 ov-default" is the
FP32 model under the plugin's defaults, bf16 on CPUs with avx512_bf16). Latency: median of
`--runs` (>= 10) runs, interleaved FP32 / edgec / NNCF so machine load hits all alike. Accuracy:
cosine vs FP32 on held-out inputs (and top-1 on the digits test split for the trained models).

Equal accuracy (`--budget nncf`, the default): NNCF runs first, and its output SQNR against FP32
on the calibration samples edgec keeps becomes edgec's `min_sqnr_db`, so edgec is asked for the
accuracy NNCF reached and its latency is compared at that accuracy; `--budget 30` sets 30 dB.
"prep s" is edgec's whole `apply_precision` (statistics, one-session sensitivity, boundary
checks, lowering) and NNCF's `quantize`. `--ort` adds ONNX Runtime rows: FP32 and edgec mixed
for the onnxruntime backend (the cost model of ORT decides there), same threads.

    python -m benchmarks.precision [--models digits_cnn,cnn,siglip,resnet50] [--runs 15] [--ort]

Numbers, not asserts. Goals: never slower than FP32, edgec <= NNCF latency at NNCF's accuracy,
edgec prep time <= 2x NNCF's.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from compiler.cost.layer_proxy import speed_proxy
from compiler.onnx_io import export_onnx, import_onnx
from compiler.precision_api import apply_precision
from targets.devices import get_profile

THREADS = 2


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _case(name: str, batch: int):
    """(fp32 path, calibration feeds, eval feeds, labels or None, constraints)."""
    if name.startswith("digits"):
        from compiler.zoo import trained

        d = trained.digits_data()
        calib = trained.calibration_feeds(128, 16)
        evals = [{"pixel_values": d["test_x"][i:i + batch]}
                 for i in range(0, len(d["test_x"]) - batch + 1, batch)]
        return trained.get(name), calib, evals, d["test_y"], {"batch": batch,
                                                               "sensitivity_samples": 8}
    if name == "resnet50":
        from compiler.zoo import resnet

        rng = np.random.default_rng(100)
        calib = [{"pixel_values": rng.standard_normal((batch, 3, 224, 224), dtype=np.float32)}
                 for _ in range(8)]
        evals = [{"pixel_values": rng.standard_normal((batch, 3, 224, 224), dtype=np.float32)}
                 for _ in range(2)]
        return resnet.onnx_path(224, batch), calib, evals, None, {
            "sensitivity_samples": 4, "batch": batch}
    from compiler import zoo

    path = zoo.get(name)
    n_cal = 4 if name == "siglip" else 16
    calib = [zoo.example_inputs(name, batch, seed=100 + i) for i in range(n_cal)]
    evals = [zoo.example_inputs(name, batch, seed=i) for i in range(2)]
    cons = {"sensitivity_samples": 2 if name == "siglip" else 8, "batch": batch}
    return path, calib, evals, None, cons


def _sqnr_db(compiled, reference, feeds) -> float:
    """Output SQNR of `compiled` against `reference` (OpenVINO compiled models) on `feeds`."""
    from passes.sensitivity import compare_outputs

    ref = [{"y": np.asarray(reference(f)[0])} for f in feeds]
    got = [{"y": np.asarray(compiled(f)[0])} for f in feeds]
    return compare_outputs(ref, got).sqnr_db


def _ov(core, model, precision: str | None, graph=None):
    """Compiled for CPU with the properties edgec's OpenVINO backend deploys for `precision`
    (the precision hint: f32 for fp32 and for the float layers of a quantized graph); None: the
    plugin's defaults (bf16 float layers on CPUs with avx512_bf16)."""
    from targets.base import BuildConfig
    from targets.openvino import ov_properties

    props = {"INFERENCE_NUM_THREADS": THREADS}
    if precision is not None:
        props = ov_properties("CPU", BuildConfig(precision=precision,
                                                 options={"threads": THREADS}), graph)
    return core.compile_model(model, "CPU", props)


def _nncf(core, path, calib):
    """NNCF's default quantize; where it fails (NNCF 3.4 raises KeyError on SigLIP's position
    embedding Gather), its transformer preset, which is what a user would try next."""
    import nncf

    try:
        return nncf.quantize(core.read_model(str(path)), nncf.Dataset(calib),
                             subset_size=len(calib)), "nncf default"
    except Exception:
        return nncf.quantize(core.read_model(str(path)), nncf.Dataset(calib),
                             subset_size=len(calib),
                             model_type=nncf.ModelType.TRANSFORMER), "nncf transformer"


def _outputs(compiled, evals) -> list[np.ndarray]:
    return [np.asarray(compiled(feeds)[0]) for feeds in evals]


def _ort_rows(name, path, mixed_ort, evals, runs) -> list[dict]:
    """ONNX Runtime FP32 vs edgec mixed lowered for the onnxruntime backend."""
    from passes.calibration import make_session, run_model

    sess = {"ort fp32": make_session(Path(path).read_bytes(), THREADS),
            "ort edgec mixed": make_session(mixed_ort, THREADS)}
    x = evals[0]
    for s in sess.values():
        run_model(s, x)
    times: dict[str, list[float]] = {k: [] for k in sess}
    for _ in range(runs):
        for k, s in sess.items():
            t = time.perf_counter()
            run_model(s, x)
            times[k].append(time.perf_counter() - t)
    ref = [next(iter(run_model(sess["ort fp32"], f).values())) for f in evals]
    base = float(np.median(times["ort fp32"]))
    rows = []
    for k, s in sess.items():
        outs = [next(iter(run_model(s, f).values())) for f in evals]
        med = float(np.median(times[k]))
        rows.append({"model": name, "variant": k, "ms": med * 1e3, "speedup": base / med,
                     "cosine": min(_cos(a, b) for a, b in zip(outs, ref))})
    return rows


def run(name: str, runs: int, batch: int, budget: str = "nncf", ort: bool = False
        ) -> list[dict]:
    import openvino as ov

    core = ov.Core()
    path, calib, evals, labels, cons = _case(name, batch)
    variants = {"fp32": _ov(core, core.read_model(str(path)), "fp32"),
                "fp32 ov-default": _ov(core, core.read_model(str(path)), None)}
    nncf_err, nncf_s, label = "", 0.0, "nncf default"
    try:
        t0 = time.perf_counter()
        qmodel, label = _nncf(core, path, calib)
        nncf_s = time.perf_counter() - t0
        variants[label] = _ov(core, qmodel, "int8")  # float layers f32, as edgec's
    except Exception as e:  # nncf missing or failing: report, don't hide
        nncf_err = f"{type(e).__name__}: {e}"[:120]
    if budget == "nncf" and label in variants:  # ask edgec for the accuracy NNCF reached
        kept = calib[:int(cons["sensitivity_samples"])]
        cons["min_sqnr_db"] = float(np.floor(_sqnr_db(variants[label], variants["fp32"],
                                                      kept) * 10) / 10)
    elif budget != "nncf":
        cons["min_sqnr_db"] = float(budget)
    t0 = time.perf_counter()
    g = import_onnx(str(path))
    report = apply_precision(g, get_profile("host"), "openvino", "mixed", calib, cons,
                             proxy=speed_proxy(g, get_profile("host"), "openvino"))
    edgec_s = time.perf_counter() - t0
    mixed = export_onnx(g)
    variants["edgec mixed"] = _ov(core, core.read_model(mixed.SerializeToString(), b""),
                                  "mixed", g)
    x = evals[0]
    times: dict[str, list[float]] = {k: [] for k in variants}
    for c in variants.values():
        c(x)  # warm up
    for _ in range(runs):
        for k, c in variants.items():
            t = time.perf_counter()
            c(x)
            times[k].append(time.perf_counter() - t)
    outs = {k: _outputs(c, evals) for k, c in variants.items()}
    base = float(np.median(times["fp32"]))
    rows = []
    for k in variants:
        med = float(np.median(times[k]))
        row = {"model": name, "variant": k, "ms": med * 1e3, "speedup": base / med,
               "cosine": min(_cos(a, b) for a, b in zip(outs[k], outs["fp32"]))}
        if labels is not None:
            pred = np.concatenate([np.argmax(o, -1) for o in outs[k]])
            row["top1"] = float(np.mean(pred == labels[:len(pred)]) * 100)
        if k == "edgec mixed":
            t, b = report["totals"], report["budget"]
            row["int8"] = f"{t['int8']}/{t['layers']}"
            row["prep_s"] = edgec_s
            row["budget"] = (f"{b.get('min_sqnr_db', '-')} dB, used {b.get('used', 0):.2f}, "
                             f"{len(b.get('checks', []))} checks")
        elif k.startswith("nncf"):
            row["prep_s"] = nncf_s
        rows.append(row)
    if nncf_err:
        rows.append({"model": name, "variant": "nncf default", "error": nncf_err})
    if ort:
        g = import_onnx(str(path))
        rep = apply_precision(g, get_profile("host"), "onnxruntime", "mixed", calib, cons,
                              proxy=speed_proxy(g, get_profile("host"), "onnxruntime"))
        ort_rows = _ort_rows(name, path, export_onnx(g), evals, runs)
        ort_rows[-1]["int8"] = f"{rep['totals']['int8']}/{rep['totals']['layers']}"
        rows += ort_rows
    return rows


def _bundle_bytes(art) -> int:
    """Size on disk of the model files in a bundle (weights and graph)."""
    return sum((art.path / f).stat().st_size for f in art.files
               if f.startswith("model.") or f.endswith(".data"))


def int4_decoder(runs: int) -> None:
    """The Llama-style decoder with INT4 block-wise weights vs FP32: size and latency."""
    import statistics
    import time

    from compiler import compile, zoo

    feeds = zoo.example_inputs("decoder")
    print(f"\nLlama-style decoder (zoo), INT4 weight-only (block 32) vs FP32; median of {runs} "
          "interleaved runs, 3 new tokens after a 5-token cache")
    print(f"{'backend':<12} {'fp32 MB':>8} {'int4 MB':>8} {'size x':>7} {'fp32 ms':>8} "
          f"{'int4 ms':>8} {'speed x':>8} {'cos logits':>11}")
    for be in ("onnxruntime", "openvino"):
        base = compile(zoo.get("decoder"), backend=be, example_inputs=feeds)
        q = compile(zoo.get("decoder"), backend=be, precision="int4-weight",
                    example_inputs=feeds)
        rb, rq = base.runner(), q.runner()
        rb.run(feeds), rq.run(feeds)
        tb, tq = [], []
        for _ in range(runs):
            t = time.perf_counter()
            ref = rb.run(feeds)
            tb.append(time.perf_counter() - t)
            t = time.perf_counter()
            got = rq.run(feeds)
            tq.append(time.perf_counter() - t)
        sb, sq = _bundle_bytes(base) / 2**20, _bundle_bytes(q) / 2**20
        mb, mq = statistics.median(tb) * 1e3, statistics.median(tq) * 1e3
        print(f"{be:<12} {sb:8.2f} {sq:8.2f} {sb / sq:7.2f} {mb:8.3f} {mq:8.3f} "
              f"{mb / mq:8.2f} {_cos(ref['logits'], got['logits']):11.6f}", flush=True)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits_cnn,digits_vit,cnn,siglip,resnet50")
    ap.add_argument("--runs", type=int, default=15)
    ap.add_argument("--batch", type=int, default=0, help="0: 64 for digits, 8 cnn, 1 others")
    ap.add_argument("--budget", default="nncf", help="'nncf' (NNCF's calibration SQNR) or dB")
    ap.add_argument("--ort", action="store_true", help="add ONNX Runtime fp32 / mixed rows")
    ap.add_argument("--no-int4", action="store_true", help="skip the INT4 decoder table")
    args = ap.parse_args([] if argv is None else argv)  # `python -m benchmarks` passes none
    runs = max(10, args.runs)
    print(f"OpenVINO CPU, {THREADS} threads, median of {runs} interleaved runs; ratio = fp32 / "
          "variant latency; cosine = worst over held-out batches vs fp32; budget: edgec's "
          f"min SQNR ({args.budget}), the share of it used, end-to-end checks\n")
    print(f"{'model':<11} {'variant':<16} {'ms':>9} {'x fp32':>7} {'cosine':>9} {'top-1':>6} "
          f"{'int8':>6} {'prep s':>7}  budget")
    for name in [m for m in args.models.split(",") if m]:
        batch = args.batch or (64 if name.startswith("digits") else 8 if name == "cnn" else 1)
        try:
            rows = run(name, runs, batch, args.budget, args.ort)
        except Exception as e:
            print(f"{name:<11} skipped: {type(e).__name__}: {str(e)[:100]}")
            continue
        for r in rows:
            if "error" in r:
                print(f"{r['model']:<11} {r['variant']:<16} failed: {r['error']}")
                continue
            top1 = f"{r['top1']:.2f}" if "top1" in r else "-"
            prep = f"{r['prep_s']:.1f}" if "prep_s" in r else "-"
            print(f"{r['model']:<11} {r['variant']:<16} {r['ms']:9.3f} {r['speedup']:7.2f} "
                  f"{r['cosine']:9.6f} {top1:>6} {r.get('int8', '-'):>6} {prep:>7}  "
                  f"{r.get('budget', '')}", flush=True)
    if not args.no_int4:
        int4_decoder(runs)


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
