"""FPGA (Kria KV260, hls4ml): model x reuse factor x width policy.

For each model the graph is lowered as compile() lowers it (simplify, Conv+BN folded), types
are assigned by a width policy, and the design is costed by edgec's analytic model
(compiler/cost/fpga.py: latency in cycles and us at the 5 ns clock, interval, DSP/LUT/BRAM36
against the KV260's 1,248 / 117,120 / 144). Accuracy is top-1 on the held-out digits split
computed with the exact fixed-point reference (compiler/fixed_sim.py), which the hls4ml C
simulation equals bit for bit (checked in every build; the last rows compile the real bundles
and run the C-sim library on the same split).

Width policies: `edgec` = passes/fixed_point.py under max_accuracy_drop 0.01 (top-1
disagreement with FP32 on 256 calibration images); `uniform-N` = every weight and result N
bits, integer bits from the same calibration ranges (no sensitivity search). Reuse: 1, 4, 16
(Resource strategy above 1) and `search` (the lowest-latency assignment that fits).

    python -m benchmarks.fpga [--no-csim]

Numbers, not asserts. The jet-tagging-shaped MLP 16-64-32-32-5 (random weights) at reuse 1
is the published anchor: hls4ml reports tens of ns to ~100 ns (arXiv 1804.06913).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from benchmarks.common import print_table
from compiler.cost.fpga import KV260_RESOURCES, estimate, reuse_options, search_reuse
from compiler.errors import ConstraintError
from compiler.fixed_sim import simulate
from compiler.fpga_layers import WEIGHT_KINDS, input_type, layers_from_graph
from compiler.precision_api import top1_disagreement
from passes.fixed_point import assign_fixed_point

POLICIES = {"edgec": {"max_metric_loss": 0.01}, "uniform-16": {"start_width": 16, "widths": ()},
            "uniform-10": {"start_width": 10, "widths": ()},
            "uniform-8": {"start_width": 8, "widths": ()}}
REUSE = (1, 4, 16, "search")


def _lowered(model):
    import passes.fusion  # noqa: F401 - registers "fusion"
    from compiler.driver import optimize
    from compiler.pipeline import PassManager
    from passes.base import PassContext, get_pass
    from targets.devices import get_profile

    g = optimize(model, pipeline="simplify", target="kv260", backend="hls")
    PassManager([get_pass("fusion", rule_sets=("conv_bn",))]).run(
        g, PassContext(profile=get_profile("kv260"), backend=None))
    return g


def _cases():
    from compiler.zoo import trained

    for name in (trained.MLP, "digits_cnn"):
        size = trained.input_size(name)
        d = trained.digits_data(size)
        yield (name, str(trained.get(name)), trained.calibration_feeds(n=256, batch=32,
                                                                         size=size),
               d["test_x"], d["test_y"])


def _jet():
    import onnx
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    sizes, nodes, inits, cur = [16, 64, 32, 32, 5], [], [], "x"
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        inits += [numpy_helper.from_array((rng.normal(size=(a, b)) / np.sqrt(a)).astype(
            np.float32), f"w{i}"), numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}")]
        nodes.append(helper.make_node("Gemm", [cur, f"w{i}", f"b{i}"], [f"g{i}"], name=f"fc{i}"))
        cur = f"g{i}"
        if i < 3:
            nodes.append(helper.make_node("Relu", [cur], [f"r{i}"], name=f"relu{i}"))
            cur = f"r{i}"
    graph = helper.make_graph(nodes, "jet", [helper.make_tensor_value_info(
        "x", onnx.TensorProto.FLOAT, ["n", 16])], [helper.make_tensor_value_info(
            cur, onnx.TensorProto.FLOAT, ["n", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    calib = [{"x": rng.normal(size=(64, 16)).astype(np.float32)} for _ in range(4)]
    return model, calib


def _rows(name, model, calib, x, y):
    from compiler.zoo.trained import accuracy

    fp32 = accuracy(model, x, y) if y is not None else None
    rows = []
    for pol, cons in POLICIES.items():
        g = _lowered(model)
        t0 = time.perf_counter()
        metric = top1_disagreement if "max_metric_loss" in cons else None
        assign_fixed_point(g, calib, {**cons, "sensitivity_samples": 32}, metric)
        t_assign = time.perf_counter() - t0
        layers, in_t = layers_from_graph(g), input_type(g)
        acc = None
        if y is not None:
            pred = np.concatenate([simulate(layers, in_t, x[i:i + 128]).argmax(-1)
                                   for i in range(0, len(x), 128)])
            acc = float(np.mean(pred == y) * 100)
        io = "io_stream" if any(ly.kind != "dense" and ly.kind in WEIGHT_KINDS
                                for ly in layers) else "io_parallel"
        wbits = [ly.types["weight"].width for ly in layers if ly.kind in WEIGHT_KINDS]
        for rf in REUSE:
            if rf == "search":
                try:
                    reuse, fp = search_reuse(layers, io_type=io, in_bits=in_t.width)
                    fits = "yes"
                except ConstraintError:
                    reuse, fp, fits = {}, None, "no (nothing fits)"
            else:
                reuse = {ly.name: min((r for r in reuse_options(ly) if r >= rf), default=1)
                         for ly in layers if ly.kind in WEIGHT_KINDS}
                fp = estimate(layers, reuse, io_type=io, in_bits=in_t.width)
                fits = "yes" if all(v <= 1 for v in fp.utilization(KV260_RESOURCES).values()) \
                    else "no"
            rfs = "-" if not reuse else f"{min(reuse.values())}..{max(reuse.values())}"
            s = fp.summary() if fp is not None else {}
            rows.append([name, pol, f"{min(wbits)}-{max(wbits)}", str(rf), rfs,
                         s.get("latency_cycles", "-"), s.get("latency_us", "-"),
                         s.get("interval_cycles", "-"), s.get("dsp", "-"), s.get("lut", "-"),
                         s.get("bram36", "-"), fits,
                         f"{acc:.2f}" if acc is not None else "-",
                         f"{fp32:.2f}" if fp32 is not None else "-", f"{t_assign:.1f}"])
    return rows


def _csim(name, model, calib, x, y):
    """The real bundle: compile() with the edgec policy, C-sim accuracy on the test split."""
    import tempfile

    from compiler import compile

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        art = compile(model, "kv260", precision="fixed", calibration=calib,
                      constraints={"max_accuracy_drop": 0.01}, out_dir=f"{tmp}/b")
        secs = time.perf_counter() - t0
        pred = art.run({"pixel_values": x})["logits"].argmax(-1)
        hls = art.manifest["hls"]
        return [name, f"{np.mean(pred == y) * 100:.2f}", hls["csim_check"]["equal"],
                hls["estimate"]["latency_us"], hls["estimate"]["dsp"], hls["estimate"]["lut"],
                hls["estimate"]["bram36"], f"{secs:.0f}"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-csim", action="store_true", help="skip the real bundle builds")
    args = ap.parse_args(argv or [])
    rows = []
    jet, jcal = _jet()
    rows += _rows("jet_mlp(random)", jet, jcal, None, None)
    cases = list(_cases())
    for name, model, calib, x, y in cases:
        rows += _rows(name, model, calib, x, y)
    print_table(["model", "widths", "w bits", "reuse", "R used", "cycles", "us", "II",
                 "DSP", "LUT", "BRAM36", "fits KV260", "top-1 %", "fp32 %", "assign s"],
                rows)
    if not args.no_csim:
        print()
        print_table(["model (edgec policy, searched reuse)", "C-sim top-1 %", "C-sim == ref",
                     "us", "DSP", "LUT", "BRAM36", "compile s"],
                    [_csim(*c) for c in cases])


if __name__ == "__main__":
    main()
