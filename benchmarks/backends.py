"""Host latency of the test models on every backend that runs here, against ONNX Runtime.

Models: the zoo CNN (1x3x64x64) and SigLIP-B/16 (1x3x224x224). Backends: ONNX Runtime (all
optimizations; the reference), OpenVINO (CPU), TVM untuned and TVM with a small MetaSchedule
budget (`tune_trials`), and PyTorch eager on the same architecture. Every backend gets the same
static input shapes. Median of >= 10 runs after warm-up (fewer, and said so, when one run takes
over 5 s); ratio = ONNX Runtime latency / backend latency (> 1: faster than ORT).
"""

from __future__ import annotations

import statistics
import sys
import time

from benchmarks.common import print_table

RUNS = 10
TUNE_TRIALS = {"cnn": 64, "siglip": 32}


def _median(fn, runs: int = RUNS) -> tuple[float, int]:
    t = time.perf_counter()
    fn()  # warm-up
    if time.perf_counter() - t > 5:
        runs = 3
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), runs


def _torch_eager(name: str, feeds):
    import torch

    from compiler.zoo import builders as zoo_builders

    module = {"cnn": zoo_builders.cnn_torch_module,
              "siglip": zoo_builders.siglip_torch_module}[name]()
    x = torch.from_numpy(feeds["pixel_values"])

    def run():
        with torch.no_grad():
            module(x)

    return run


def main(models=("cnn", "siglip")) -> None:
    from compiler import compile, zoo
    from compiler.errors import CompileError

    for name in models:
        path, feeds = zoo.get(name), zoo.example_inputs(name)
        shapes = {k: v.shape for k, v in feeds.items()}  # static everywhere: a fair comparison
        rows, ref = [], None
        configs = [("onnxruntime", "onnxruntime", {}), ("openvino", "openvino", {}),
                   ("tvm (untuned)", "tvm", {}),
                   (f"tvm (tuned, {TUNE_TRIALS[name]} trials)", "tvm",
                    {"tune_trials": TUNE_TRIALS[name],
                     "tuning_cache": f".cache/tvm_tuning/{name}"})]
        for label, backend, opts in configs:
            t0 = time.perf_counter()
            try:
                art = compile(path, backend=backend, options=opts, example_inputs=feeds,
                              shapes=shapes)
            except CompileError as e:
                rows.append([label, "-", "-", f"not built: {e}"[:70], "-"])
                continue
            build = time.perf_counter() - t0
            runner = art.runner()
            t, n = _median(lambda r=runner, f=feeds: r.run(f))
            ref = ref or t
            ver = art.verification or {}
            rows.append([label, f"{1e3 * t:.2f}", f"{ref / t:.2f}x",
                         f"build {build:.0f} s, cos {ver.get('cosine', 0):.6f}", n])
            print(f"  {name}: {label} done", file=sys.stderr, flush=True)
        t, n = _median(_torch_eager(name, feeds))
        rows.append(["pytorch eager", f"{1e3 * t:.2f}", f"{ref / t:.2f}x", "", n])
        print(f"\n{name}: host latency (ms), median of n runs after warm-up; "
              "ratio = ORT / backend")
        print_table(["backend", "latency ms", "vs ORT", "notes", "n"], rows)


if __name__ == "__main__":
    main()
