"""Foundation speed and memory: import + shape inference + export.

- SigLIP-B/16 (93 M params, 350 MB): goal < 1 s, median of 5.
- a generated 100,000-node graph: goal < 10 s, median of 5.
- a generated 3 GB external-data model round-tripped to a new folder: goal peak RSS < 1.5 GB
  above the interpreter's baseline (measured in a child process with getrusage).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import median_time, print_table

_CHILD = r"""
import resource, sys, time
from pathlib import Path
import compiler
from passes.shape_inference import infer_shapes
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
src, dst = Path(sys.argv[1]), Path(sys.argv[2])
t = time.perf_counter()
g = compiler.import_onnx(src)
infer_shapes(g)
compiler.export_onnx(g, dst)
dt = time.perf_counter() - t
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(base, peak, dt)
"""


def _round_trip(path) -> None:
    import compiler
    from passes.shape_inference import infer_shapes

    g = compiler.import_onnx(path)
    infer_shapes(g)
    compiler.export_onnx(g)


def main() -> None:
    import onnx

    import compiler
    from compiler import zoo

    rows = []
    siglip = zoo.get("siglip")
    t = median_time(lambda: _round_trip(siglip), runs=5)
    rows.append(["SigLIP-B/16 import+infer+export", f"{t:.3f} s", "< 1 s",
                 "ok" if t < 1 else "MISSED"])

    model = zoo.make_chain_graph(100_000)
    data = model.SerializeToString()
    t = median_time(lambda d=data: _round_trip(d), runs=5)
    rows.append(["100k-node graph import+infer+export", f"{t:.2f} s", "< 10 s",
                 "ok" if t < 10 else "MISSED"])
    del model, data

    with tempfile.TemporaryDirectory(dir=Path(__file__).resolve().parent.parent) as d:
        src = Path(d) / "big" / "model.onnx"
        src.parent.mkdir()
        zoo.make_large_external_model(src, 3 * 2**30)
        dst = Path(d) / "out"
        dst.mkdir()
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        out = subprocess.run([sys.executable, "-c", _CHILD, str(src), str(dst / "model.onnx")],
                             capture_output=True, text=True, env=env, check=True)
        base_kb, peak_kb, secs = out.stdout.split()
        extra = (int(peak_kb) - int(base_kb)) / 2**20
        size = sum(f.stat().st_size for f in dst.iterdir()) / 2**30
        onnx.checker.check_model(str(dst / "model.onnx"))
        compiler.import_onnx(dst / "model.onnx")
        rows.append([f"3 GB external-data round trip ({size:.2f} GB written, {float(secs):.1f} s)",
                     f"+{extra:.2f} GB RSS", "< 1.5 GB", "ok" if extra < 1.5 else "MISSED"])
    print_table(["measurement", "result", "goal", ""], rows)


if __name__ == "__main__":
    main()
