"""The mutation fuzzer's fast profile (issue #21): 300 seeded, deterministic cases over the
small zoo models (and the outside corpus's small models when its cache is present), every
mutation kind, ONNX Runtime and OpenVINO at every precision, TVM on the tiny model every 30th
case. Every case must compile or be refused with a clean CompileError (no temporary path in its
message, no output folder left, nothing written into the working directory); none may escape as
an internal error. The long profile is `make fuzz` (tests/fuzz/run.py)."""

from __future__ import annotations

import importlib.util
import logging
import warnings

import pytest

from tests.fuzz.harness import corpus, make_cases, run_case, summarize
from tests.fuzz.mutators import MUTATORS

CASES, SEED = 300, 0
OUTSIDE_MAX_MB = 1.0  # the outside corpus's small models (the long profile takes them all)


def _backends() -> tuple[str, ...]:
    return tuple(b for b, mod in (("onnxruntime", "onnxruntime"), ("openvino", "openvino"))
                 if importlib.util.find_spec(mod) is not None)


@pytest.mark.slow
def test_fast_fuzz_profile_has_no_internal_errors(tmp_path):
    models = corpus(outside_max_mb=OUTSIDE_MAX_MB)
    tvm = ("tiny",) if importlib.util.find_spec("tvm") is not None else ()
    cases = make_cases(list(models), CASES, SEED, _backends(), tvm_models=tvm, tvm_every=30)
    outcomes = []
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for case in cases:
                outcomes.append(run_case(case, models, tmp_path / str(case.index)))
    finally:
        logging.disable(logging.NOTSET)
    s = summarize(outcomes)
    internal = [o.line() for o in outcomes if o.kind == "internal"]
    assert not internal, "\n".join(internal)
    # the profile exercises what it claims: both verdicts, every mutation kind, every backend
    assert s["counts"].get("compiled", 0) > 0 and s["counts"].get("refused", 0) > 0
    assert {o.case.mutation for o in outcomes} == set(MUTATORS)
    assert {o.case.backend for o in outcomes} == set(_backends()) | ({"tvm"} if tvm else set())


def test_cases_are_deterministic():
    a = make_cases(["tiny", "cnn"], 40, 3, ("onnxruntime", "openvino"), ("tiny",), 7)
    b = make_cases(["tiny", "cnn"], 40, 3, ("onnxruntime", "openvino"), ("tiny",), 7)
    assert a == b and len({c.mutation for c in a}) == len(MUTATORS)
    assert {c.backend for c in a if c.index % 7 == 0} == {"tvm"}


def test_every_mutator_changes_the_model(tmp_path):
    import random

    import onnx

    from compiler import zoo
    from tests.fuzz.mutators import mutate

    base = onnx.load(str(zoo.get("control_flow")))
    for kind in MUTATORS:
        folder = tmp_path / kind / "model"
        folder.mkdir(parents=True)
        got = mutate(base, kind, random.Random(0), folder)
        assert got is not None, kind
        mutated, what = got
        assert mutated.SerializeToString() != base.SerializeToString() or "dim" in what, kind
