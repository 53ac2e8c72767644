"""The long fuzz profile (`make fuzz`): python -m tests.fuzz.run --cases 5000 [--seed 1].

Prints one line per internal error and, at the end, the counts compiled / refused (a clean
CompileError) / internal. Exit status 1 when any case is internal. The process runs under an
address-space limit, so a case that slips past edgec's memory guards fails here with a
MemoryError (counted as internal) instead of exhausting a shared machine.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import tempfile
import time
import warnings
from pathlib import Path

from tests.fuzz.harness import corpus, make_cases, run_case, summarize


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.fuzz.run")
    p.add_argument("--cases", type=int, default=5000)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--backends", default="onnxruntime,openvino")
    p.add_argument("--tvm-every", type=int, default=50, help="every N-th case uses TVM (0: no)")
    p.add_argument("--address-space-gb", type=float, default=12.0)
    p.add_argument("--outside-max-mb", type=float, default=None,
                   help="outside corpus models up to this size (default: all present)")
    p.add_argument("--log", help="write every outcome as JSON lines here")
    args = p.parse_args(argv)
    limit = int(args.address_space_gb * 2**30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    logging.disable(logging.WARNING)
    warnings.simplefilter("ignore")
    models = corpus(outside_max_mb=args.outside_max_mb)
    cases = make_cases(list(models), args.cases, args.seed, tuple(args.backends.split(",")),
                       tvm_models=("tiny",), tvm_every=args.tvm_every)
    outcomes = []
    t0 = time.time()
    log = open(args.log, "w") if args.log else None  # noqa: SIM115
    for case in cases:
        with tempfile.TemporaryDirectory(prefix="edgec-fuzz-") as tmp:
            o = run_case(case, models, Path(tmp))
        outcomes.append(o)
        if o.kind == "internal":
            print(o.line(), flush=True)
        if log:
            log.write(json.dumps({"case": case.__dict__, "kind": o.kind, "what": o.what,
                                  "detail": o.detail, "where": o.where}) + "\n")
        if (case.index + 1) % 250 == 0:
            print(f"... {case.index + 1} cases, {time.time() - t0:.0f} s", file=sys.stderr,
                  flush=True)
    s = summarize(outcomes)
    print(json.dumps(s, indent=1))
    print(f"{len(cases)} cases in {time.time() - t0:.0f} s: " + ", ".join(
        f"{k} {s['counts'].get(k, 0)}" for k in ("compiled", "refused", "internal", "skipped")))
    return 1 if s["counts"].get("internal") else 0


if __name__ == "__main__":
    sys.exit(main())
