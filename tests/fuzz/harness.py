"""The fuzz loop: seeded cases (model x mutation x backend x precision), each compiled through
`compiler.compile()` and sorted into compiled / refused (a clean CompileError) / internal.

A case is judged by edgec's contract, not only by the exception type. A refusal must be a
`CompileError` whose message names no temporary path the user never saw, with no output folder
left behind; every case (built or refused) must leave the working directory empty (edgec never
writes outside its output folder). Anything else counts as internal, with the reason.

The corpus is the small zoo models (and the outside corpus when `compiler.zoo.outside` exists):
mutations work on their ONNX protos; external-data files are copied next to each mutated model.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import tempfile
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from tests.fuzz.mutators import MUTATORS, mutate

__all__ = ["Case", "Outcome", "corpus", "make_cases", "run_case", "summarize"]

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "mixed", "int4-weight")
ZOO_MODELS = ("tiny", "control_flow", "cnn", "external_data")
#: every build runs with this cap on what edgec may allocate (verification inputs, calibration
#: buffers, folded constants), so a mutated 2^31-1 dim is refused before it can exhaust the
#: machine the suite runs on
MEMORY_CAP_MB = 512


@dataclass(frozen=True)
class Case:
    index: int
    model: str
    mutation: str
    backend: str
    precision: str
    seed: int


@dataclass
class Outcome:
    case: Case
    kind: str  # "compiled" | "refused" | "internal" | "skipped"
    what: str = ""  # the mutation applied
    detail: str = ""  # the error's type and message, or why it is internal
    where: str = ""  # innermost edgec frame of an internal error

    def line(self) -> str:
        c = self.case
        return (f"#{c.index} {c.model}/{c.mutation} [{self.what}] {c.backend}/{c.precision}: "
                f"{self.kind}: {self.detail} {self.where}")


@dataclass
class _Model:
    name: str
    path: Path
    proto: onnx.ModelProto
    calibration: list[dict[str, Any]] = field(default_factory=list)


def corpus(names: tuple[str, ...] = ZOO_MODELS, outside_max_mb: float | None = None
           ) -> dict[str, _Model]:
    """The models to mutate: zoo models by name, plus the outside corpus models present in the
    cache (those up to `outside_max_mb` when given; None: all of them)."""
    from compiler import zoo

    out: dict[str, _Model] = {}
    for name in names:
        path = zoo.get(name)
        calib = [zoo.example_inputs(name, seed=s) for s in range(3)]
        out[name] = _Model(name, path, onnx.load(str(path), load_external_data=False), calib)
    out.update(_outside_models(outside_max_mb))
    return out


def _outside_models(max_mb: float | None) -> dict[str, _Model]:
    """The outside corpus (models nobody here wrote) when its module and cache exist."""
    try:
        from compiler.zoo import outside
    except ImportError:
        return {}
    models: dict[str, _Model] = {}
    for name in outside.available():
        path = outside.path(name)
        if max_mb is not None and path.stat().st_size > max_mb * 2**20:
            continue
        models[f"outside:{name}"] = _Model(
            f"outside:{name}", path, onnx.load(str(path), load_external_data=False),
            outside.calibration(name, n=3))
    return models


def make_cases(models: list[str], n: int, seed: int, backends: tuple[str, ...],
               tvm_models: tuple[str, ...] = (), tvm_every: int = 0) -> list[Case]:
    """`n` deterministic cases; mutations round-robin so every kind is covered evenly; TVM
    (slow) only every `tvm_every`-th case and only on `tvm_models`."""
    kinds = list(MUTATORS)
    cases = []
    for i in range(n):
        rng = random.Random(seed * 1_000_003 + i)
        kind = kinds[i % len(kinds)]
        use_tvm = tvm_every and i % tvm_every == 0 and tvm_models
        model = rng.choice(list(tvm_models) if use_tvm else models)
        backend = "tvm" if use_tvm else rng.choice(backends)
        cases.append(Case(i, model, kind, backend, rng.choice(PRECISIONS),
                          rng.randrange(2**31)))
    return cases


def _external_files(model: onnx.ModelProto) -> set[str]:
    from tests.fuzz.mutators import subgraphs

    return {e.value for g in subgraphs(model.graph) for t in g.initializer
            if t.data_location == onnx.TensorProto.EXTERNAL
            for e in t.external_data if e.key == "location"}


_TMP_PATH = re.compile(re.escape(tempfile.gettempdir().rstrip("/")) + r"/[^\s'\":]+")


@contextlib.contextmanager
def _cwd(path: Path):
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def _edgec_frame(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if "/compiler/" in f.filename or "/passes/" in f.filename
              or "/targets/" in f.filename]
    f = frames[-1] if frames else None
    return f"at {Path(f.filename).name}:{f.lineno} {f.name}" if f else ""


def run_case(case: Case, models: dict[str, _Model], root: Path) -> Outcome:
    """Mutate, write, compile from an empty working directory, and judge the result."""
    import compiler
    from compiler.errors import CompileError

    src = models[case.model]
    folder, cwd, out = root / "model", root / "cwd", root / "out"
    for d in (folder, cwd):
        d.mkdir(parents=True)
    for loc in _external_files(src.proto):  # external-data files travel with the model
        if (src.path.parent / loc).is_file():
            shutil.copy(src.path.parent / loc, folder / loc)
    rng = random.Random(case.seed)
    kinds = list(MUTATORS)
    start = kinds.index(case.mutation)
    mutated = None
    for k in kinds[start:] + kinds[:start]:  # a model without (say) subgraphs: next kind
        mutated = mutate(src.proto, k, rng, folder)
        if mutated is not None:
            break
    if mutated is None:
        return Outcome(case, "skipped", detail="nothing to mutate")
    proto, what = mutated
    path = folder / "model.onnx"
    path.write_bytes(proto.SerializeToString())
    calib = src.calibration if case.precision in ("int8", "mixed") else None
    try:
        with _cwd(cwd):
            compiler.compile(str(path), target="host", backend=case.backend,
                             precision=case.precision, calibration=calib, out_dir=out,
                             options={"memory_cap_mb": MEMORY_CAP_MB})
        kind, detail = "compiled", ""
    except CompileError as e:
        kind, detail = "refused", f"{type(e).__name__}: {e}"
        leaked = [p for p in _TMP_PATH.findall(str(e)) if not p.startswith(str(root))]
        if leaked:
            return Outcome(case, "internal", what, f"temporary path in message: {detail}")
        if out.exists():
            return Outcome(case, "internal", what, f"output folder left behind: {detail}")
    except Exception as e:  # noqa: BLE001 - the point is to catch what escapes
        return Outcome(case, "internal", what, f"{type(e).__name__}: {str(e)[:300]}",
                       _edgec_frame(e))
    stray = sorted(p.name for p in cwd.iterdir())
    if stray:
        return Outcome(case, "internal", what, f"wrote {stray} into the working directory")
    return Outcome(case, kind, what, detail[:300])


def summarize(outcomes: list[Outcome]) -> dict[str, Any]:
    """Counts per kind, and per (mutation, kind)."""
    counts = Counter(o.kind for o in outcomes)
    by_mutation = Counter((o.case.mutation, o.kind) for o in outcomes)
    return {"counts": dict(counts),
            "by_mutation": {f"{m}/{k}": n for (m, k), n in sorted(by_mutation.items())}}
