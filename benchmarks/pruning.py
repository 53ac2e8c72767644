"""Structured pruning without fine-tuning: edgec on the ONNX graph vs Torch-Pruning on the torch
model, on the trained digits CNN and ViT, at 20/30/50% of FLOPs removed.

Accuracy: top-1 on the 597 held-out digits. edgec rows: importance magnitude (the family
Torch-Pruning's GroupMagnitudeImportance(p=2) belongs to) and WIFV, each with no recovery, bias
compensation and least squares (128 training images as calibration data). Torch-Pruning
(benchmark-only dependency, `pip install torch-pruning`; skipped with a note when absent):
MetaPruner with GroupMagnitudeImportance(p=2) on the same trained weights, its per-layer ratio
found by bisection so that its MACs fall by the same fraction (heads pruned whole on the ViT,
residual width kept, as in edgec where LayerNorm pins it), no fine-tuning.

Speed: the unpruned and the pruned (WIFV + least squares) graph on ONNX Runtime and OpenVINO
(host CPU, batch 32), median of `--runs` interleaved runs, next to the cost model's predicted
speed-up for the same backend. Kept channels are rounded to the host's channel_alignment (its
SIMD width; `--align 1` shows why: ONNX Runtime's NCHWc kernels fall back to a plain path and
the pruned CNN runs slower than the dense one).

    python -m benchmarks.pruning [--models digits_cnn,digits_vit] [--ratios 0.2,0.3,0.5]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import types

from benchmarks.common import print_table

BATCH = 32


def _edgec(path, ratio, importance, recovery, cal, align: int = 1):
    import compiler
    from passes.pruning import prune_graph

    g = compiler.optimize(str(path), "simplify")
    rep = prune_graph(g, ratio, calibration=cal if (importance != "magnitude" or
                                                   recovery != "none") else None,
                      importance=importance, recovery=recovery, align=align)
    return g, rep


def _torch_acc(model, x, y) -> float:
    import torch

    with torch.no_grad():
        pred = torch.cat([model(torch.from_numpy(x[i:i + 128])).argmax(-1)
                          for i in range(0, len(x), 128)])
    return float((pred.numpy() == y).mean() * 100)


def _attention_forward(self, x):
    import torch

    b, n, _ = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    att = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.hd ** -0.5, -1)
    return self.proj(torch.matmul(att, v).transpose(1, 2).reshape(b, n, self.heads * self.hd))


def _tp_prune(base, name, ratio_channels):
    import torch
    import torch_pruning as tp

    model = copy.deepcopy(base)
    ex = torch.zeros(1, 1, 16, 16)
    kw = {}
    if name == "digits_cnn":
        ignored = [model.head]
    else:
        atts = [m for m in model.modules() if hasattr(m, "qkv")]
        ignored = [model.embed, model.head] + [a.proj for a in atts] + \
            [blk.mlp[2] for blk in model.blocks]
        kw = {"num_heads": {a.qkv: a.heads for a in atts}, "prune_num_heads": True,
              "prune_head_dims": False, "head_pruning_ratio": ratio_channels}
    pruner = tp.pruner.MetaPruner(model, ex, importance=tp.importance.GroupMagnitudeImportance(
        p=2), pruning_ratio=ratio_channels, ignored_layers=ignored, **kw)
    pruner.step()
    if name != "digits_cnn":
        for a in atts:
            a.heads = pruner.num_heads[a.qkv]
            a.forward = types.MethodType(_attention_forward, a)
    macs, _ = tp.utils.count_ops_and_params(model, ex)
    return model, macs


def _torch_pruning(name, ratio, d):
    """(accuracy, MACs removed) of Torch-Pruning at the channel ratio removing `ratio` MACs."""
    import torch
    import torch_pruning as tp

    from compiler.zoo import trained

    base = trained.torch_model(name)
    macs0, _ = tp.utils.count_ops_and_params(base, torch.zeros(1, 1, 16, 16))
    lo, hi, best = 0.0, 0.95, None
    for _ in range(12):
        mid = (lo + hi) / 2
        try:
            model, macs = _tp_prune(base, name, mid)
        except Exception as e:  # noqa: BLE001 - report what Torch-Pruning could not do
            return f"failed: {type(e).__name__}: {e}"[:60], None
        removed = 1 - macs / macs0
        best = (model, removed)
        if abs(removed - ratio) < 0.01:
            break
        lo, hi = (mid, hi) if removed < ratio else (lo, mid)
    model, removed = best
    return _torch_acc(model.eval(), d["test_x"], d["test_y"]), removed


def _median_pair(runners, feeds, runs: int) -> list[float]:
    times: list[list[float]] = [[] for _ in runners]
    for r in runners:
        r.run(feeds)
    for _ in range(runs):
        for i, r in enumerate(runners):
            t = time.perf_counter()
            r.run(feeds)
            times[i].append(time.perf_counter() - t)
    return [statistics.median(t) * 1e3 for t in times]


def _speed(path, pruned_graph, runs: int) -> list[list[object]]:
    import compiler
    from compiler.cost import predict
    from compiler.errors import CompileError
    from compiler.zoo import trained
    from targets.devices import get_profile

    feeds = {"pixel_values": trained.digits_data()["test_x"][:BATCH]}
    shapes = {"pixel_values": feeds["pixel_values"].shape}
    profile = get_profile("host")
    rows = []
    for backend in ("onnxruntime", "openvino"):
        try:
            arts = [compiler.compile(m, backend=backend, shapes=shapes, example_inputs=feeds,
                                     verify=False) for m in (str(path), pruned_graph)]
        except CompileError as e:
            rows.append([backend, "-", "-", "-", f"not built: {e}"[:60]])
            continue
        t0, t1 = _median_pair([a.runner() for a in arts], feeds, runs)
        pred = []
        for m in (str(path), pruned_graph):
            g = compiler.optimize(m, "fusion", backend=backend, shapes=shapes)
            pred.append(predict(g, {"backend": backend, "precision": "fp32", "fusion": True},
                                profile, bindings={"batch": BATCH}).latency_ms)
        rows.append([backend, f"{t0:.3f}", f"{t1:.3f}", f"{t0 / t1:.2f}x",
                     f"{pred[0] / pred[1]:.2f}x"])
    return rows


def main(argv: list[str] | None = None) -> None:
    import compiler
    from compiler.zoo import trained

    ap = argparse.ArgumentParser(prog="python -m benchmarks.pruning")
    ap.add_argument("--models", default="digits_cnn,digits_vit")
    ap.add_argument("--ratios", default="0.2,0.3,0.5")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--align", type=int, default=None)
    ap.add_argument("--no-speed", action="store_true")
    args = ap.parse_args(argv or [])
    try:
        import torch_pruning  # noqa: F401

        have_tp = True
    except ImportError:
        have_tp = False
        print("note: torch-pruning is not installed (pip install torch-pruning); its column is "
              "left out")
    from targets.devices import get_profile

    d = trained.digits_data()
    cal = trained.calibration_feeds(128, 32)
    align = args.align if args.align is not None else get_profile("host").channel_alignment
    print(f"kept channels rounded to multiples of {align} (host channel_alignment unless "
          "--align)")
    for name in args.models.split(","):
        path = trained.get(name)
        base = trained.accuracy(str(path), d["test_x"], d["test_y"])
        print(f"\n{name}: unpruned top-1 {base:.1f}% (597 held-out digits)")
        rows, keep = [], {}
        for ratio in [float(r) for r in args.ratios.split(",")]:
            row: list[object] = [f"{ratio:.0%}"]
            for imp in ("magnitude", "wifv"):
                for rec in ("none", "bias", "lstsq"):
                    g, rep = _edgec(path, ratio, imp, rec, cal, align)
                    acc = trained.accuracy(compiler.export_onnx(g), d["test_x"], d["test_y"])
                    row.append(f"{acc:.1f}")
                    if imp == "wifv" and rec == "lstsq":
                        keep[ratio] = (g, rep["flops_removed"])
            row.append(f"{keep[ratio][1]:.1%}")
            if have_tp:
                acc, removed = _torch_pruning(name, ratio, d)
                row += [acc if isinstance(acc, str) else f"{acc:.1f}",
                        f"{removed:.1%}" if removed is not None else "-"]
            else:
                row += ["-", "-"]
            rows.append(row)
        print_table(["FLOPs", "mag/none", "mag/bias", "mag/lstsq", "wifv/none", "wifv/bias",
                     "wifv/lstsq", "edgec removed", "Torch-Pruning", "TP MACs removed"], rows)
        for ratio, (g, _) in ({} if args.no_speed else keep).items():
            print(f"\n{name} at {ratio:.0%} (wifv + least squares), batch {BATCH}, median of "
                  f"{args.runs} interleaved runs:")
            print_table(["backend", "unpruned ms", "pruned ms", "measured", "predicted"],
                        _speed(path, compiler.export_onnx(g), args.runs))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
