"""`make demo`: build the SigLIP-B/16 vision encoder locally, compile it for this machine, run
and verify it, and print a short report. Usage: python -m compiler.demo [--target T]
[--backend B] [--model NAME] [--out DIR]."""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from compiler import compile, zoo
from compiler.errors import CompileError
from compiler.inspect import summarize


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m compiler.demo")
    p.add_argument("--model", default="siglip", choices=zoo.NAMES)
    p.add_argument("--target", default="host")
    p.add_argument("--backend", default=None)
    p.add_argument("--out", default="build/demo")
    args = p.parse_args(argv)

    t = time.perf_counter()
    print(f"[1/3] building the {args.model!r} test model (random weights, cached) ...",
          flush=True)
    path = zoo.get(args.model)
    print(f"      {path} ({time.perf_counter() - t:.1f} s)")
    feeds = zoo.example_inputs(args.model)
    print(f"[2/3] compiling for {args.target} ...", flush=True)
    t = time.perf_counter()
    try:
        art = compile(path, target=args.target, backend=args.backend, out_dir=args.out,
                      example_inputs=feeds)
    except CompileError as e:
        print(f"edgec: error: {e}", file=sys.stderr)
        return 2
    compile_s = time.perf_counter() - t
    print("[3/3] running the compiled model ...", flush=True)
    times = []
    for _ in range(5):
        t = time.perf_counter()
        art.run(feeds)
        times.append(time.perf_counter() - t)
    from compiler.driver import load_graph

    s = summarize(load_graph(path))
    ver = art.verification or {}
    print()
    print(f"model      {args.model}: {s['nodes']} nodes, {s['parameters'] / 1e6:.1f} M params")
    print(f"target     {art.target} / backend {art.backend} ({art.config['precision']})")
    print(f"passes     {', '.join(dict.fromkeys(art.config['passes']))}")
    print(f"compile    {compile_s:.1f} s -> {art.path}")
    print(f"latency    {1e3 * statistics.median(times):.1f} ms (median of 5, this machine)")
    print(f"verified   {ver.get('passed')}: max abs error {ver.get('max_abs_error', 0):.3g}, "
          f"cosine {ver.get('cosine', 0):.6f} vs ONNX Runtime on the original")
    print(f"bundle     {', '.join(art.files)}")
    return 0 if ver.get("passed") is not False else 1


if __name__ == "__main__":
    sys.exit(main())
