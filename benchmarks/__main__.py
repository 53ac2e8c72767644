"""Run the benchmarks: python -m benchmarks [name ...]."""

from __future__ import annotations

import importlib
import sys

ALL = ["io", "backends", "fusion", "precision", "cost", "cost_outside", "npu", "pruning", "fpga"]


def main(argv: list[str]) -> int:
    names = argv or ALL
    for name in names:
        try:
            mod = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError as e:
            if e.name == f"benchmarks.{name}":
                print(f"(benchmark {name!r} not written yet)")
                continue
            raise
        print(f"\n=== {name} ===", flush=True)
        mod.main()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
