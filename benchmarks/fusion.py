"""Does edgec's fusion pay? Host latency with and without it, and the pipeline's own speed.

For each model, the same graph is compiled twice, with the "simplify" pipeline (no fusion) and
the "fusion" pipeline, for ONNX Runtime at its *basic* optimization level (so ORT's own fusions
do not hide ours), ONNX Runtime at "all" (ORT's full fusion set, the default a user gets) and
OpenVINO (which fuses for itself). Runs are interleaved (A, B, A, B, ...) so machine noise hits
both; the median of N runs after warm-up is reported, with the ratio. Also: the fusion pipeline
on a generated 100,000-node graph (goal < 10 s).
"""

from __future__ import annotations

import gc
import statistics
import time

from benchmarks.common import print_table

RUNS = 10


def _interleaved(fa, fb, runs: int = RUNS) -> tuple[float, float]:
    fa(), fb()  # warm-up
    ta, tb = [], []
    for _ in range(runs):
        t = time.perf_counter()
        fa()
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        fb()
        tb.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb)


def _generated_graph(blocks: int):
    """Conv+BN, decomposed LayerNorm and erf-GELU blocks: 16 nodes each."""
    import numpy as np
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    x = "x"
    c = 4

    def init(name, arr):
        inits.append(onnx.numpy_helper.from_array(np.asarray(arr, np.float32), name))
        return name

    init("eps", 1e-5)
    init("half", 0.5)
    init("one", 1.0)
    init("rsqrt2", 1 / np.sqrt(2))
    for b in range(blocks):
        p = f"b{b}_"
        w = init(p + "w", rng.standard_normal((c, c, 1, 1)) * 0.3)
        bn = [init(p + k, v) for k, v in (("g", np.ones(c)), ("be", np.zeros(c)),
                                           ("m", np.zeros(c)), ("v", np.ones(c)))]
        nodes += [h.make_node("Conv", [x, w], [p + "c"]),
                  h.make_node("BatchNormalization", [p + "c", *bn], [p + "bn"]),
                  h.make_node("ReduceMean", [p + "bn"], [p + "mu"], axes=[-1]),
                  h.make_node("Sub", [p + "bn", p + "mu"], [p + "d"]),
                  h.make_node("Mul", [p + "d", p + "d"], [p + "sq"]),
                  h.make_node("ReduceMean", [p + "sq"], [p + "var"], axes=[-1]),
                  h.make_node("Add", [p + "var", "eps"], [p + "ve"]),
                  h.make_node("Sqrt", [p + "ve"], [p + "sd"]),
                  h.make_node("Div", [p + "d", p + "sd"], [p + "n"]),
                  h.make_node("Mul", [p + "n", init(p + "lg", np.ones(8))], [p + "ln1"]),
                  h.make_node("Add", [p + "ln1", init(p + "lb", np.zeros(8))], [p + "ln"]),
                  h.make_node("Mul", [p + "ln", "rsqrt2"], [p + "s"]),
                  h.make_node("Erf", [p + "s"], [p + "e"]),
                  h.make_node("Add", [p + "e", "one"], [p + "e1"]),
                  h.make_node("Mul", [p + "ln", p + "e1"], [p + "g1"]),
                  h.make_node("Mul", [p + "g1", "half"], [p + "out"])]
        x = p + "out"
    g = h.make_graph(nodes, "gen", [h.make_tensor_value_info("x", T.FLOAT, [1, c, 8, 8])],
                     [h.make_tensor_value_info(x, T.FLOAT, [1, c, 8, 8])], inits)
    return h.make_model(g, opset_imports=[h.make_opsetid("", 17)])


def main() -> None:
    from compiler import compile, import_onnx, optimize, zoo
    from compiler.pipeline import get_pipeline
    from passes.base import PassContext
    from targets.base import get_backend

    rows = []
    for name in ("cnn", "siglip", "decoder"):
        path, feeds = zoo.get(name), zoo.example_inputs(name)
        n_base = len(optimize(path, pipeline="simplify"))
        n_fused = len(optimize(path, pipeline="fusion"))
        for backend, opts, label in (
                ("onnxruntime", {"graph_optimization_level": "basic"}, "ORT basic"),
                ("onnxruntime", {"graph_optimization_level": "all"}, "ORT all"),
                ("openvino", {}, "OpenVINO")):
            base = compile(path, backend=backend, pipeline="simplify", options=opts,
                           example_inputs=feeds)
            fused = compile(path, backend=backend, pipeline="fusion", options=opts,
                            example_inputs=feeds)
            ra, rb = base.runner(), fused.runner()
            ta, tb = _interleaved(lambda r=ra, f=feeds: r.run(f),
                                  lambda r=rb, f=feeds: r.run(f))
            rows.append([name, label, f"{n_base} -> {n_fused}", f"{1e3 * ta:.2f}",
                         f"{1e3 * tb:.2f}", f"{ta / tb:.2f}x",
                         "helps" if ta / tb > 1.05 else "no gain" if ta / tb > 0.95
                         else "SLOWER"])
    print(f"host latency, median of {RUNS} interleaved runs after warm-up (ms)")
    print_table(["model", "runtime", "nodes", "no fusion", "edgec fusion", "speed-up", ""],
                rows)

    model = _generated_graph(6250)
    graph = import_onnx(model)
    n = len(graph)
    ctx = PassContext(backend=get_backend("onnxruntime"))
    gc.collect()
    t = time.perf_counter()
    for pm in get_pipeline("fusion"):
        pm.run(graph, ctx)
    dt = time.perf_counter() - t
    print()
    print_table(["graph", "nodes before", "nodes after", "fusion pipeline", "goal"],
                [["generated Conv+BN/LayerNorm/GELU", n, len(graph), f"{dt:.2f} s",
                  "< 10 s " + ("ok" if dt < 10 else "MISSED")]])


if __name__ == "__main__":
    main()
