"""The cost-model calibration's measurement harness: whole models timed on this machine.

Each measurement runs in a fresh subprocess (`python -m targets.harness --run-one SPEC`), so
its peak RSS increase (VmHWM after the runs minus RSS before the session is created) belongs
to that model alone, and a crashing runtime cannot take the caller down. Latency is the median
of repeated runs after warm-up (all samples are stored, so a later fit can use another
statistic). Backends: onnxruntime always; openvino and tvm when
`targets.base.get_backend(name)` imports them, or, until those modules land, when their SDK
imports (the runner then drives the SDK directly and the file says `runner: direct-sdk`).
The fit is `compiler.cost.calibration`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["available_host_backends", "measure"]


def available_host_backends(allow_direct: bool = True) -> dict[str, str]:
    """{backend: "module" | "direct-sdk"} for the backends that can run on this machine."""
    from targets.base import get_backend

    out = {}
    for name, sdk in (("onnxruntime", "onnxruntime"), ("openvino", "openvino"),
                      ("tvm", "tvm")):
        try:
            get_backend(name)
            out[name] = "module"
            continue
        except Exception:  # module missing or its SDK failed to import
            pass
        if allow_direct:
            try:
                __import__(sdk)
                out[name] = "direct-sdk"
            except Exception:
                pass
    return out


def measure(model_path: str, feeds_path: str, backend: str, options: Mapping[str, Any],
            budget_s: float = 1.5, timeout: float = 600) -> dict[str, Any]:
    """Latency samples and peak RSS increase of one model in a fresh subprocess."""
    spec = {"model": str(model_path), "feeds": str(feeds_path), "backend": backend,
            "options": dict(options), "budget_s": budget_s}
    env = dict(os.environ)
    if options.get("threads"):
        env["TVM_NUM_THREADS"] = str(options["threads"])
    cmd = [sys.executable, "-m", "targets.harness", "--run-one"]
    cwd = str(Path(__file__).resolve().parents[1])
    if backend == "tvm" and not os.path.exists(str(model_path) + ".tvm.so"):
        # compile in its own process: LLVM's peak RSS must not count as the model's
        subprocess.run(cmd + [json.dumps({**spec, "build_only": True})], capture_output=True,
                       text=True, timeout=timeout, env=env, cwd=cwd)
    proc = subprocess.run(cmd + [json.dumps(spec)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"error": (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["failed"]}
    return json.loads(lines[-1])


def _tvm_library(model_path: str, feeds: dict[str, np.ndarray], threads: int) -> str:
    """Compile (once, cached next to the model) as the TVM backend does for this CPU; the .so
    path."""
    so = model_path + ".tvm.so"
    if os.path.exists(so):
        return so
    import onnx

    from targets.tvm_build import host_library

    host_library(onnx.load(model_path), {k: list(v.shape) for k, v in feeds.items()},
                 so + ".tmp.so")
    os.replace(so + ".tmp.so", so)
    return so


def _runner(spec: dict, feeds: dict[str, np.ndarray]):
    """A zero-argument callable running one inference with the spec's backend."""
    backend, opts, path = spec["backend"], spec["options"], spec["model"]
    if backend == "onnxruntime":
        import onnxruntime as ort

        from targets.onnxruntime import session_options

        so = session_options({"graph_optimization_level": opts.get("opt_level", "all"),
                              "intra_op_num_threads": opts.get("threads", 0)})
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        return lambda: sess.run(None, feeds)
    if backend == "openvino":
        import openvino as ov

        req = ov.Core().compile_model(path, "CPU", spec["ov_properties"]).create_infer_request()
        return lambda: req.infer(feeds)
    if backend == "tvm":
        import tvm
        from tvm import relax

        lib = tvm.runtime.load_module(spec["tvm_so"])
        vm = relax.VirtualMachine(lib, tvm.cpu())
        args = [tvm.runtime.tensor(v) for v in feeds.values()]
        return lambda: vm["main"](*args)
    raise ValueError(f"no host runner for {backend}")


def _run_one(spec: dict) -> dict[str, Any]:
    import resource
    import time

    import psutil

    feeds = dict(np.load(spec["feeds"]))
    if spec["backend"] == "tvm":
        spec["tvm_so"] = _tvm_library(spec["model"], feeds, int(spec["options"].get("threads",
                                                                                     0)))
        if spec.get("build_only"):
            return {"built": spec["tvm_so"]}
    if spec["backend"] == "openvino":  # the properties the backend deploys (precision hint)
        from targets.base import BuildConfig
        from targets.openvino import ov_properties

        opts = spec["options"]
        spec["ov_properties"] = ov_properties("CPU", BuildConfig(
            precision=opts.get("precision", "fp32"), options={"threads": opts.get("threads")}))
    rss0 = psutil.Process().memory_info().rss
    run = _runner(spec, feeds)
    run()
    run()
    samples: list[float] = []
    t_end = time.perf_counter() + spec["budget_s"]
    while len(samples) < 3 or (time.perf_counter() < t_end and len(samples) < 200):
        t = time.perf_counter()
        run()
        samples.append((time.perf_counter() - t) * 1e3)
    # VmHWM is this process image's high-water mark; ru_maxrss is not usable here because
    # Linux carries the parent's maxrss across fork+exec
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) * 1024
    return {"median_ms": float(np.median(samples)), "min_ms": float(min(samples)),
            "samples_ms": [round(x, 4) for x in samples[:50]],
            "rss_increase_mb": max(peak - rss0, 0) / 2**20}


if __name__ == "__main__":  # the measuring subprocess
    if len(sys.argv) == 3 and sys.argv[1] == "--run-one":
        print(json.dumps(_run_one(json.loads(sys.argv[2]))))
    else:
        sys.exit("usage: python -m benchmarks cost  (measures, fits and writes the files)")
