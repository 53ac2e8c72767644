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
    """Medians of A and B run alternately; sub-20 ms models get 100 runs (noise dominates)."""
    t = time.perf_counter()
    fa(), fb()  # warm-up
    if time.perf_counter() - t < 0.04:
        runs = max(runs, 100)
    ta, tb = [], []
    for _ in range(runs):
        t = time.perf_counter()
        fa()
        ta.append(time.perf_counter() - t)
        t = time.perf_counter()
        fb()
        tb.append(time.perf_counter() - t)
    return statistics.median(ta), statistics.median(tb)


def main() -> None:
    from compiler import compile, import_onnx, optimize, zoo
    from compiler.pipeline import get_pipeline
    from compiler.zoo import make_fusion_blocks
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
    print(f"host latency, median of {RUNS} interleaved runs after warm-up (100 for models under "
          "20 ms) (ms)")
    print_table(["model", "runtime", "nodes", "no fusion", "edgec fusion", "speed-up", ""],
                rows)

    model = make_fusion_blocks(6250)  # 16 nodes a block: 100,000 nodes
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
