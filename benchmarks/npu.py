"""Ethos-U through TOSA + Vela: model x NPU configuration.

For each model (trained digits CNN, DS-CNN KWS, MobileNetV2-0.35 96 px, MobileNetV2-1.0 224 px,
the digits ViT as a small transformer) and each Ethos-U profile (u55-128, u65-256, u85-256):
edgec lowers to INT8 (calibration: 4 samples), partitions, lowers the NPU part to TOSA, checks
it bit-exact against its integer reference and compiles it with Vela. Printed: Vela's NPU
cycles and predicted ms at the profile's clock, SRAM and flash/DRAM KiB, ops on the NPU vs the
host CPU, and the TOSA-reference-model output agreement (cosine vs FP32 on one held-out input).

MobileNetV2-1.0 224 on U55-128 is compared with Arm's published 7,346,172 NPU cycles (ML
Embedded Evaluation Kit, Corstone-300 FVP; reference/npu-fpga-notes.md). Random weights here:
cycles depend on shapes and weight compressibility, so the ratio is a structure check, not a
reproduction of Arm's number.

    python -m benchmarks.npu [--models ds_cnn,mbv2_224] [--targets ethos-u55-128]

Numbers, not asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from benchmarks.common import print_table

TARGETS = ("ethos-u55-128", "ethos-u65-256", "ethos-u85-256")
PUBLISHED_MBV2_U55_128 = 7_346_172


def _case(name: str):
    """(model, input name, shape, calibration feeds)."""
    rng = np.random.default_rng(0)
    if name.startswith("digits"):
        from compiler.zoo import trained

        feeds = trained.calibration_feeds(32, 8)
        return str(trained.get(name)), "pixel_values", (1, 1, 16, 16), feeds
    from compiler.zoo import npu

    model, shape = {
        "ds_cnn": (npu.ds_cnn, (1, 1, 49, 10)),
        "mbv2_96": (lambda: npu.mobilenet_v2(96, 0.35), (1, 3, 96, 96)),
        "mbv2_224": (lambda: npu.mobilenet_v2(224, 1.0), (1, 3, 224, 224)),
    }[name]
    feeds = [{"input": rng.normal(0, 1, shape).astype(np.float32)} for _ in range(4)]
    return model(), "input", shape, feeds


def run(name: str, target: str) -> dict:
    from compiler import compile

    model, _inp, _shape, feeds = _case(name)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        art = compile(model, target=target, precision="int8", calibration=feeds,
                      out_dir=os.path.join(tmp, "b"))
        secs = time.perf_counter() - t
        with open(os.path.join(tmp, "b", "npu_report.json")) as f:
            rep = json.load(f)
    m = art.manifest
    v = rep["vela"]
    return {"model": name, "target": target, "cycles": v["cycles"],
            "ms": v["inference_ms"], "sram_kib": v["sram_kib"], "flash_kib": v["flash_kib"],
            "npu_ops": m["legality"]["accelerated"], "host_ops": len(m["legality"]["fallback"]),
            "bit_exact_lsb": rep["bit_exact"]["max_abs_diff_lsb"],
            "cosine": (m.get("verification") or {}).get("cosine"), "compile_s": secs}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="benchmarks.npu")
    ap.add_argument("--models", default="digits_cnn,ds_cnn,mbv2_96,mbv2_224,digits_vit")
    ap.add_argument("--targets", default=",".join(TARGETS))
    args = ap.parse_args(argv or [])
    rows, mbv2 = [], None
    for name in args.models.split(","):
        for target in args.targets.split(","):
            try:
                r = run(name, target)
            except Exception as e:  # a benchmark row, not a crash: say why
                rows.append([name, target, f"error: {type(e).__name__}: {str(e)[:80]}"] +
                            [""] * 7)
                continue
            if name == "mbv2_224" and target == "ethos-u55-128":
                mbv2 = r["cycles"]
            print(f"{name} {target}: {r}", flush=True)
            rows.append([name, target, f"{r['cycles']:,}", f"{r['ms']:.3f}",
                         f"{r['sram_kib']:.0f}", f"{r['flash_kib']:.0f}",
                         f"{r['npu_ops']}/{r['host_ops']}", r["bit_exact_lsb"],
                         f"{r['cosine']:.4f}" if r["cosine"] is not None else "-",
                         f"{r['compile_s']:.0f}"])
    print_table(["model", "target", "NPU cycles", "pred ms", "SRAM KiB", "flash KiB",
                 "ops NPU/host", "TOSA vs ref LSB", "cos vs FP32", "compile s"], rows)
    if mbv2 is not None:
        print(f"\nMobileNetV2-1.0 224 on U55-128: Vela {mbv2:,} cycles vs published "
              f"{PUBLISHED_MBV2_U55_128:,} (Arm MLEK, Corstone-300 FVP): ratio "
              f"{mbv2 / PUBLISHED_MBV2_U55_128:.2f}")


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
