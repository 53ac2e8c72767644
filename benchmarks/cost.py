"""Cost-model benchmark: measure, fit (leave-one-model-out), score, write calibration files.

    python -m benchmarks cost            # measures what is not cached, then scores
    python -m benchmarks.cost --fresh    # re-measure everything (do this on a quiet machine)
    python -m benchmarks.cost --fresh=tiny_b256,mlp  # re-measure the cases named so (prefixes)
    python -m benchmarks.cost --no-write # score only, leave compiler/cost/data alone

Cases: synthetic conv (3x3, 1x1, depthwise) / matmul / elementwise / attention models at
several sizes and narrow classifier heads on many rows (MatMul + bias + Softmax, `head_case`),
always in the calibration set (the smallest ones pin the per-call and per-kernel overheads),
and the test models (zoo cnn, tiny, external_data MLP, decoder, siglip, the local ResNet-50)
at a couple of sizes. Each runs under every host backend that is available, at fp32 / int8 /
fp16 (lowered with passes.quantize on every Conv/MatMul/Gemm with a constant weight, in
compile()'s order: BN folding, lowering, then fusion) and, for ONNX Runtime, with fusion off
(graph optimisation "basic", no edgec fusion). TVM is built as its backend builds for the host
(default CPU schedules, no tuning). Scores use only test models held out of the fit
(leave-one-model-out), so no prediction was fitted on its own measurement. Measurements are
cached in .cache/cost-bench/.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from benchmarks.common import print_table
from compiler.cost import calibration as C
from compiler.cost.kernels import kernels, resident_weight_bytes
from compiler.cost.layer_proxy import ATTENTION_CASE
from compiler.cost.memory import activation_liveness
from compiler.cost.params import Calibration, host_fingerprint, prior_params, save_calibration
from compiler.onnx_io import export_onnx, import_onnx
from targets import harness

ROOT = Path(__file__).resolve().parent.parent / ".cache" / "cost-bench"
TEST_GROUPS = ("cnn", "tiny", "mlp", "decoder", "siglip", "resnet")
RNG = np.random.default_rng(0)
# The statistic fitted and scored. On a shared, noisy machine the minimum over runs estimates
# the uncontended time best; on a quiet machine median and minimum agree (both are stored).
STAT = "min_ms"


def _model(name: str, nodes, inputs, outputs, inits) -> onnx.ModelProto:
    g = helper.make_graph(nodes, name, inputs, outputs, inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _w(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array((RNG.standard_normal(shape) * 0.05).astype(np.float32), name)


def conv_case(c: int, s: int, k: int = 3, group: int = 1, stride: int = 1, head: bool = False):
    """Three Conv+Relu layers, c channels, s x s pixels, k x k kernels (group=c: depthwise),
    each with `stride`; `head`: then a 1x1 Conv to 4 channels, so that in int8 the three
    layers' results are re-quantized (the integer kernels ONNX Runtime runs) and only the cheap
    head stays float."""
    nodes, inits, x = [], [], "x"
    for i in range(3):
        inits += [_w(f"w{i}", c, c // group, k, k), _w(f"b{i}", c)]
        nodes += [helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], group=group,
                                   pads=[k // 2] * 4, strides=[stride, stride]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        x = f"r{i}"
    if head:
        inits += [_w("wh", 4, c, 1, 1)]
        nodes.append(helper.make_node("Conv", [x, "wh"], ["head"]))
        x = "head"
    vi = helper.make_tensor_value_info
    return _model("conv", nodes, [vi("x", TensorProto.FLOAT, [1, c, s, s])],
                  [vi(x, TensorProto.FLOAT, None)], inits), {"x": (1, c, s, s)}


def mm_case(m: int, k: int):
    nodes, inits, x = [], [], "x"
    for i in range(2):
        inits += [_w(f"w{i}", k, k), _w(f"b{i}", k)]
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]),
                  helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
                  helper.make_node("Relu", [f"a{i}"], [f"r{i}"])]
        x = f"r{i}"
    vi = helper.make_tensor_value_info
    return _model("mm", nodes, [vi("x", TensorProto.FLOAT, [m, k])],
                  [vi(x, TensorProto.FLOAT, None)], inits), {"x": (m, k)}


def ew_case(n: int):
    inits = [_w("a", n), _w("b", n)]
    ops = [("Add", ["x", "a"]), ("Mul", ["e0", "b"]), ("Sigmoid", ["e1"]), ("Mul", ["e2", "x"]),
           ("Tanh", ["e3"]), ("Add", ["e4", "e1"])]
    nodes = [helper.make_node(op, ins, [f"e{i}"]) for i, (op, ins) in enumerate(ops)]
    vi = helper.make_tensor_value_info
    return _model("ew", nodes, [vi("x", TensorProto.FLOAT, [n])],
                  [vi("e5", TensorProto.FLOAT, None)], inits), {"x": (n,)}


def head_case(m: int, k: int, n: int):
    """A narrow classifier head on many rows: MatMul [m, k] x [k, n] + bias, then Softmax over
    n. Pins the per-row costs of short GEMM outputs and short softmax rows."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]),
             helper.make_node("Add", ["mm", "b"], ["a"]),
             helper.make_node("Softmax", ["a"], ["y"], axis=-1)]
    vi = helper.make_tensor_value_info
    return _model("head", nodes, [vi("x", TensorProto.FLOAT, [m, k])],
                  [vi("y", TensorProto.FLOAT, None)], [_w("w", k, n), _w("b", n)]), {"x": (m, k)}


def attn_case(s: int, d: int = 64):
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
             helper.make_node("MatMul", ["x", "xt"], ["s"]),
             helper.make_node("Mul", ["s", "scale"], ["ss"]),
             helper.make_node("Softmax", ["ss"], ["p"], axis=-1),
             helper.make_node("MatMul", ["p", "x"], ["y"])]
    vi = helper.make_tensor_value_info
    inits = [numpy_helper.from_array(np.array(d ** -0.5, np.float32), "scale")]
    return _model("attn", nodes, [vi("x", TensorProto.FLOAT, [1, s, d])],
                  [vi("y", TensorProto.FLOAT, None)], inits), {"x": (1, s, d)}


def _zoo(name: str, feeds: dict):
    from compiler import zoo

    return onnx.load(str(zoo.get(name))), {k: np.asarray(v) for k, v in feeds.items()}


def cases() -> list[tuple[str, str, object]]:
    """(case id, group, builder) where builder() -> (ModelProto, feeds or shapes)."""
    from compiler.zoo import resnet, zoo

    out = [(f"conv_c{c}_s{s}", "synthetic", lambda c=c, s=s: conv_case(c, s))
           for c, s in ((8, 8), (16, 56), (64, 28), (128, 14), (32, 112))]
    out += [("conv_pw_c64_s28", "synthetic", lambda: conv_case(64, 28, k=1)),
            ("conv_dw_c64_s56", "synthetic", lambda: conv_case(64, 56, group=64)),
            # ResNet-like shapes: many channels on few pixels, and stride 2
            ("conv_c256_s7", "synthetic", lambda: conv_case(256, 7)),
            ("conv_pw_c512_s7", "synthetic", lambda: conv_case(512, 7, k=1)),
            ("conv_s2_c64_s56", "synthetic", lambda: conv_case(64, 56, stride=2))]
    out += [(f"conv_q_c{c}_s{s}", "synthetic", lambda c=c, s=s: conv_case(c, s, head=True))
            for c, s in ((64, 28), (128, 14), (256, 7))]
    out += [(f"mm_m{m}_k{k}", "synthetic", lambda m=m, k=k: mm_case(m, k))
            for m, k in ((1, 64), (1, 1024), (64, 512), (256, 1024))]
    out += [(f"ew_n{n}", "synthetic", lambda n=n: ew_case(n)) for n in (2**8, 2**14, 2**18, 2**21)]
    out += [(f"head_m{m}_k{k}_n{n}", "synthetic", lambda m=m, k=k, n=n: head_case(m, k, n))
            for m, k, n in ((1024, 8, 4), (4096, 32, 8), (512, 64, 16))]
    out += [(f"{ATTENTION_CASE}s{s}", "synthetic", lambda s=s: attn_case(s)) for s in (64, 256)]
    rn = np.random.default_rng(1)
    out += [(f"cnn_{s}", "cnn", lambda s=s: _zoo("cnn", {"pixel_values": rn.standard_normal(
        (1, 3, s, s)).astype(np.float32)})) for s in (64, 128)]
    out += [(f"tiny_b{b}", "tiny", lambda b=b: _zoo("tiny", zoo.example_inputs("tiny", b)))
            for b in (1, 256)]
    out += [(f"mlp_b{b}", "mlp", lambda b=b: _zoo("external_data", zoo.example_inputs(
        "external_data", b))) for b in (1, 32)]
    out += [(f"decoder_s{s}_p{p}", "decoder", lambda s=s, p=p: _zoo(
        "decoder", zoo.decoder_inputs(1, s, p))) for s, p in ((16, 0), (1, 32))]
    out += [("siglip_224", "siglip", lambda: _zoo("siglip", zoo.example_inputs("siglip")))]
    out += [(f"resnet_{s}", "resnet", lambda s=s: (onnx.load(str(resnet.onnx_path(s))), {
        "pixel_values": (1, 3, s, s)})) for s in (112,)]
    return out


def configs(backends: dict[str, str], case: str) -> list[dict]:
    big = case.startswith("siglip")  # TVM's untuned SigLIP build takes minutes
    out = []
    for be in backends:
        if be == "tvm" and big:
            continue
        precs = ("fp32", "int8", "fp16") if be != "tvm" else ("fp32",)
        out += [{"backend": be, "precision": p, "fusion": True, "threads": 0} for p in precs]
        if be == "onnxruntime":
            out.append({"backend": be, "precision": "fp32", "fusion": False, "threads": 0})
            if case.startswith(("conv", "mm", "cnn")):
                out.append({"backend": be, "precision": "fp32", "fusion": True, "threads": 1})
    return out


def _bindings(graph, feeds: dict) -> dict[str, int]:
    out = {}
    for v in graph.inputs:
        if v.name in feeds and v.shape:
            for d, n in zip(v.shape, np.shape(feeds[v.name])):
                if isinstance(d, str):
                    out[d] = int(n)
    return out


def build_variant(case: str, builder, cfg: dict, profile):
    """Write the measured model + feeds; return (graph as measured, model path, feeds path)."""
    from compiler.search import lower_graph, prepare_graph
    from passes.shape_inference import infer_shapes

    key = f"{case}-{cfg['precision']}-{'f' if cfg['fusion'] else 'n'}-{cfg['backend']}"
    path, fpath = ROOT / "models" / f"{key}.onnx", ROOT / "models" / f"{case}.npz"
    proto, feeds = builder()
    feeds = {k: (v if isinstance(v, np.ndarray) else RNG.standard_normal(v).astype(np.float32))
             for k, v in feeds.items()}
    if path.is_file():
        graph = import_onnx(onnx.load(str(path)))
    else:
        graph = import_onnx(proto)
        infer_shapes(graph)
        if cfg["precision"] != "fp32":  # compile()'s order: fold BN, lower, then fuse
            graph = lower_graph(graph, cfg, profile, feeds=feeds)
        if cfg["fusion"]:
            graph = prepare_graph(graph, cfg, profile)
        path.parent.mkdir(parents=True, exist_ok=True)
        export_onnx(graph, str(path))
        if not fpath.is_file():
            np.savez(fpath, **feeds)
    infer_shapes(graph)
    return graph, path, fpath, _bindings(graph, feeds)


def collect(profile, backends: dict[str, str], fresh: bool | tuple[str, ...] = False
            ) -> list[dict]:
    """All measurements (cached), each with the features the fit needs; `fresh`: re-measure
    all (True) or the cases whose names start with one of the given prefixes."""
    db_path = ROOT / "measurements.json"
    db = {} if fresh is True or not db_path.is_file() else json.loads(db_path.read_text())
    if fresh and fresh is not True:
        db = {k: v for k, v in db.items() if not json.loads(k)[0].startswith(fresh)}
    rows = []
    for case, group, builder in cases():
        for cfg in configs(backends, case):
            key = json.dumps([case, cfg], sort_keys=True)
            ecfg = {**cfg, "fusion": cfg["fusion"] or cfg["backend"] != "onnxruntime"}
            try:
                graph, path, fpath, bind = build_variant(case, builder, cfg, profile)
            except Exception as e:  # a lowering or export the model does not support
                print(f"  skip {case} {cfg}: {type(e).__name__}: {e}"[:160], flush=True)
                continue
            if key not in db:
                opts = {"threads": cfg["threads"], "precision": cfg["precision"],
                        "opt_level": "all" if cfg["fusion"] else "basic"}
                db[key] = harness.measure(str(path), str(fpath), cfg["backend"], opts, budget_s=0.8)
                db_path.parent.mkdir(parents=True, exist_ok=True)
                db_path.write_text(json.dumps(db, indent=0))
                print(f"  measured {case:16s} {cfg} -> {db[key].get('median_ms', db[key])}",
                      flush=True)
            m = db[key]
            if "median_ms" not in m:
                continue
            ks, _ = kernels(graph, ecfg, profile, bind)
            rows.append({"case": case, "group": group, "config": cfg, "kernels": ks,
                         "measured": m, "bind": bind,
                         "weights_mb": resident_weight_bytes(graph, ecfg, profile, bind) / 2**20,
                         "acts_mb": activation_liveness(graph, bind).peak_bytes / 2**20})
    return rows


def _sample(r: dict) -> C.Sample:
    cfg = {**r["config"], "fusion": r["config"]["fusion"] or r["config"]["backend"] !=
           "onnxruntime"}
    return C.Sample(r["case"], cfg, r["kernels"], r["measured"][STAT], r["weights_mb"],
                    r["acts_mb"], r["measured"].get("rss_increase_mb"))


def fit_backend(rows: list[dict], profile, backend: str):
    samples = [_sample(r) for r in rows if r["config"]["backend"] == backend]
    params = C.fit(samples, profile, backend, prior_params(profile, backend))
    return C.fit_memory(samples, params)


def spearman(a, b) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main(argv: list[str] | None = None) -> None:
    from targets.devices import get_profile

    argv = sys.argv[1:] if argv is None else argv
    profile = get_profile("host")
    backends = harness.available_host_backends()
    print(f"host: {profile.description}; backends: {backends}")
    prefixes = tuple(p for a in argv if a.startswith("--fresh=") for p in a[8:].split(",") if p)
    if any(a.startswith("--fresh=") for a in argv) and not prefixes:
        sys.exit("--fresh= needs case-name prefixes (e.g. --fresh=tiny_b256,mlp); "
                 "--fresh re-measures everything")
    rows = collect(profile, backends, fresh=prefixes or "--fresh" in argv)
    scored, lomo = [], {}
    for group in TEST_GROUPS:
        train = [r for r in rows if r["group"] != group]
        for be in backends:
            if any(r["group"] == group and r["config"]["backend"] == be for r in rows):
                lomo[(group, be)] = fit_backend(train, profile, be)
        for r in rows:
            if r["group"] == group:
                p = lomo[(group, r["config"]["backend"])]
                s = _sample(r)
                pred = C.predict_sample(s, p, profile)
                mem = p.mem_w * s.weights_mb + p.mem_a * s.acts_mb + p.mem_base_mb
                scored.append((r, pred, mem))
    _report(scored, rows, lomo, profile, backends)
    if "--no-write" not in argv:
        _write(rows, scored, profile, backends)


def _report(scored, rows, lomo, profile, backends) -> None:
    table = []
    for r, pred, _ in scored:
        c, meas = r["config"], r["measured"][STAT]
        table.append((r["case"], c["backend"], c["precision"], "on" if c["fusion"] else "off",
                      c["threads"] or "all", f"{meas:.3f}", f"{pred:.3f}",
                      f"{100 * (pred / meas - 1):+.0f}%"))
    print_table(("model", "backend", "prec", "fusion", "thr", "measured ms", "predicted ms",
                 "error"), table)
    pm = np.array([[p, r["measured"][STAT]] for r, p, _ in scored])
    within = np.mean(np.abs(pm[:, 0] / pm[:, 1] - 1) <= 0.2)
    print(f"\nheld-out pairs: {len(pm)} over {len({r['config']['backend'] for r, _, _ in scored})}"
          f" backends; Spearman {spearman(pm[:, 0], pm[:, 1]):.3f}; within +-20%: "
          f"{100 * within:.0f}%; median |error| "
          f"{100 * np.median(np.abs(pm[:, 0] / pm[:, 1] - 1)):.0f}%")
    mem = [(r, m) for r, _, m in scored if r["measured"].get("rss_increase_mb") and
           r["config"]["backend"] != "tvm"]
    errs = np.array([m / r["measured"]["rss_increase_mb"] - 1 for r, m in mem])
    print(f"memory (held out, {len(errs)} runs, onnxruntime/openvino): within +-15%: "
          f"{100 * np.mean(np.abs(errs) <= 0.15):.0f}%, median |error| "
          f"{100 * np.median(np.abs(errs)):.0f}%")
    _regret(rows, lomo, profile, backends)


def _regret(rows, lomo, profile, backends) -> None:
    from compiler.search import search

    out = []
    for case in sorted({r["case"] for r in rows if r["group"] in TEST_GROUPS}):
        rs = [r for r in rows if r["case"] == case]
        group = rs[0]["group"]
        measured = {json.dumps(r["config"], sort_keys=True): r["measured"][STAT]
                    for r in rs}
        proto, feeds = dict((c[0], c[2]) for c in cases())[case]()
        graph = import_onnx(proto)
        bind = rs[0]["bind"] or {k: 1 for k in ()}
        cal = {be: lomo[(group, be)] for be in backends if (group, be) in lomo}
        res = search(graph, profile, bindings=bind, calibration=cal, legality=False,
                     backends=sorted(cal), precisions=("fp32", "int8", "fp16"))
        pick = next((c for c in res.candidates if c.key in measured), None)
        if pick is None:
            continue
        best = min(measured, key=measured.get)
        regret = measured[pick.key] / measured[best] - 1
        cfg = pick.config
        out.append((case, len(measured), f"{cfg['backend']}/{cfg['precision']}/"
                    f"{'on' if cfg['fusion'] else 'off'}", f"{measured[pick.key]:.3f}",
                    json.loads(best)["backend"] + "/" + json.loads(best)["precision"],
                    f"{measured[best]:.3f}", f"{100 * regret:.1f}%"))
    print()
    print_table(("model", "configs", "search pick", "pick ms", "fastest", "fastest ms",
                 "regret"), out)


def _write(rows, scored, profile, backends) -> None:
    for be, how in backends.items():
        rs = [r for r in rows if r["config"]["backend"] == be]
        if not rs:
            continue
        params = fit_backend(rows, profile, be)
        errs = [abs(p / r["measured"][STAT] - 1) for r, p, _ in scored
                if r["config"]["backend"] == be]
        params.uncertainty = round(max(0.1, float(np.percentile(errs, 80))), 3) if errs else 0.5
        params.source = (f"fitted on {len(rs)} measurements on this host ({how}); uncertainty "
                         "= 80th percentile of leave-one-model-out relative error")
        meas = [{"case": r["case"], "group": r["group"], "config": r["config"],
                 "bindings": r["bind"], **{k: v for k, v in r["measured"].items()}}
                for r in rs]
        cal = Calibration("host", be, params, host_fingerprint(),
                            {"lomo_p80_rel_error": params.uncertainty}, meas,
                            [f"backend availability: {how}; the runtime SDK (onnxruntime / "
                             "openvino CPU plugin / TVM Relax llvm) runs the model file directly",
                             f"latency statistic fitted: {STAT} of runs after 2 warm-ups"])
        print("wrote", save_calibration(cal))


if __name__ == "__main__":
    main()
