"""Pass infrastructure: registry, configs, PassManager (order, fixed point, timing, errors that
name the pass) and named pipelines, end to end on small and 20,000-node graphs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper as h

import compiler
import compiler.pipeline
import passes.base
from compiler.errors import CompileError, InvalidModelError, MissingDependencyError, PassError
from compiler.ir import Graph
from compiler.pipeline import (
    PassManager,
    PassRecord,
    get_pipeline,
    pipelines,
    register_pipeline,
)
from passes.base import (
    Pass,
    PassConfig,
    PassContext,
    PassResult,
    available_passes,
    get_pass,
    register_pass,
)
from passes.dce import DeadCodeElimination
from passes.fold import ConstantFolding, FoldConfig
from tests.helpers import assert_same_outputs, const, make_model, op_types, tensor_info

BUILTIN = ["constant_folding", "dce", "identity_elimination", "onnxsim", "shape_inference"]


# -- test passes -------------------------------------------------------------------------------
@dataclass(frozen=True)
class _CountdownConfig(PassConfig):
    changes: int = 2  # how many runs report a change


class _Countdown(Pass):
    """Reports `modified` for its first `changes` runs; logs every run."""

    name = "test_countdown"
    Config = _CountdownConfig

    def __init__(self, *args, log: list | None = None, **kw) -> None:
        super().__init__(*args, **kw)
        self.log = log if log is not None else []
        self.left = self.config.changes

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        self.log.append(self.name)
        changed = self.left > 0
        self.left -= 1
        return PassResult(changed, {"left": self.left})


class _Quiet(_Countdown):
    name = "test_quiet"

    def __init__(self, log: list | None = None) -> None:
        super().__init__(log=log, changes=0)


class _Boom(Pass):
    name = "test_boom"
    exc: Exception = ValueError("index out of range")

    def run(self, graph: Graph, ctx: PassContext) -> PassResult:
        raise self.exc


class _OnlyJetson(_Quiet):
    name = "test_only_jetson"
    targets = ("jetson-orin",)


def _graph() -> Graph:
    m = make_model([h.make_node("Relu", ["x"], ["y"])], [tensor_info("x", T.FLOAT, [1, 4])],
                   [tensor_info("y", T.FLOAT, [1, 4])])
    return compiler.import_onnx(m)


# -- registry and configs ----------------------------------------------------------------------
def test_builtin_passes_are_registered_and_load_lazily():
    assert set(BUILTIN) <= set(available_passes())
    for name in BUILTIN:
        p = get_pass(name)
        assert isinstance(p, Pass) and p.name == name
        assert dataclasses.is_dataclass(p.config) and isinstance(p.config, PassConfig)
    assert isinstance(get_pass("dce"), DeadCodeElimination)


def test_get_pass_applies_config_and_configs_are_frozen():
    p = get_pass("constant_folding", max_elements=7)
    assert isinstance(p, ConstantFolding) and p.config == FoldConfig(max_elements=7)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.config.max_elements = 8  # type: ignore[misc]
    assert ConstantFolding(FoldConfig(max_elements=3)).config.max_elements == 3


def test_unknown_pass_is_a_compile_error_listing_the_available_ones():
    with pytest.raises(CompileError, match=r"unknown pass 'no_such_pass'.*constant_folding"):
        get_pass("no_such_pass")


def test_unknown_option_is_a_compile_error_naming_pass_and_option():
    with pytest.raises(CompileError, match=r"'constant_folding'.*\['max_elemnts'\]"):
        get_pass("constant_folding", max_elemnts=3)
    with pytest.raises(CompileError, match=r"'dce'.*none"):
        get_pass("dce", aggressive=True)


def test_overrides_next_to_a_config_are_not_silently_dropped():
    try:
        p = ConstantFolding(FoldConfig(), max_elements=5)
    except CompileError:
        return
    assert p.config.max_elements == 5


def test_register_pass_makes_a_pass_available_by_name(monkeypatch):
    monkeypatch.setattr(passes.base, "_REGISTRY", dict(passes.base._REGISTRY))

    @register_pass
    class _Registered(_Quiet):
        name = "test_registered"

    assert "test_registered" in available_passes()
    assert isinstance(get_pass("test_registered"), _Registered)
    with pytest.raises(TypeError, match="needs a name"):
        @register_pass
        class _Nameless(_Quiet):
            name = ""


# -- PassManager -------------------------------------------------------------------------------
def test_passes_run_in_order_once_without_fixed_point():
    log: list[str] = []
    pm = PassManager([_Countdown(log=log, changes=5), _Quiet(log)])
    assert pm.run(_graph()) is True
    assert log == ["test_countdown", "test_quiet"]
    assert [(r.name, r.iteration) for r in pm.records] == [("test_countdown", 0),
                                                           ("test_quiet", 0)]


def test_fixed_point_stops_when_no_pass_modifies():
    log: list[str] = []
    pm = PassManager([_Countdown(log=log, changes=2), _Quiet(log)], fixed_point=True)
    assert pm.run(_graph()) is True
    # Iterations 0 and 1 change something, iteration 2 changes nothing: stop after it.
    assert [(r.name, r.iteration, r.result.modified) for r in pm.records] == [
        ("test_countdown", 0, True), ("test_quiet", 0, False),
        ("test_countdown", 1, True), ("test_quiet", 1, False),
        ("test_countdown", 2, False), ("test_quiet", 2, False)]


def test_fixed_point_with_nothing_to_do_runs_once_and_reports_no_change():
    pm = PassManager([_Quiet(), _Quiet()], fixed_point=True)
    assert pm.run(_graph()) is False
    assert len(pm.records) == 2 and {r.iteration for r in pm.records} == {0}


def test_fixed_point_is_capped_by_max_iterations():
    pm = PassManager([_Countdown(changes=100)], fixed_point=True, max_iterations=3)
    assert pm.run(_graph()) is True
    assert [r.iteration for r in pm.records] == [0, 1, 2]


def test_records_carry_timing_result_and_serialise():
    pm = PassManager([_Countdown(changes=1)])
    pm.run(_graph())
    (rec,) = pm.records
    assert isinstance(rec, PassRecord) and rec.seconds >= 0.0
    assert rec.result.stats == {"left": 0}
    d = pm.summary()[0]
    assert set(d) == {"pass", "iteration", "modified", "seconds", "stats"}
    assert d["pass"] == "test_countdown" and d["modified"] is True and d["seconds"] >= 0


def test_passes_for_other_targets_are_skipped():
    log: list[str] = []
    pm = PassManager([_OnlyJetson(log), _Quiet(log)])
    pm.run(_graph(), PassContext())
    assert log == ["test_quiet"] and [r.name for r in pm.records] == ["test_quiet"]

    class _Jetson:
        name = "jetson-orin"

    log.clear()
    PassManager([_OnlyJetson(log)]).run(_graph(), PassContext(profile=_Jetson()))
    assert log == ["test_only_jetson"]


def test_internal_error_in_a_pass_becomes_pass_error_naming_it():
    pm = PassManager([_Quiet(), _Boom()])
    with pytest.raises(PassError, match=r"pass 'test_boom' failed.*ValueError.*out of range") \
            as info:
        pm.run(_graph())
    assert isinstance(info.value.__cause__, ValueError)
    assert [r.name for r in pm.records] == ["test_quiet"]  # the failing pass has no record


def test_compile_error_in_a_pass_keeps_its_type_and_names_the_pass():
    class _BadModel(_Boom):
        name = "test_bad_model"
        exc = InvalidModelError("weights are corrupt")

    with pytest.raises(InvalidModelError, match=r"pass 'test_bad_model' failed.*corrupt"):
        PassManager([_BadModel()]).run(_graph())


def test_missing_dependency_in_a_pass_names_the_pass():
    class _NeedsSdk(_Boom):
        name = "test_needs_sdk"
        exc = MissingDependencyError("fancysdk", "fancy", "for the test pass")

    with pytest.raises(CompileError, match=r"test_needs_sdk.*fancysdk"):
        PassManager([_NeedsSdk()]).run(_graph())


# -- pipelines ---------------------------------------------------------------------------------
def test_unknown_pipeline_is_a_compile_error():
    with pytest.raises(CompileError, match=r"unknown pipeline 'fastest'.*simplify"):
        get_pipeline("fastest")


def test_simplify_pipeline_stages():
    assert {"none", "simplify", "onnxsim"} <= set(pipelines())
    assert get_pipeline("none") == []
    stages = get_pipeline("simplify")
    assert [[p.name for p in pm.passes] for pm in stages] == [
        ["shape_inference"], ["identity_elimination", "constant_folding", "dce"],
        ["shape_inference"]]
    assert [pm.fixed_point for pm in stages] == [False, True, False]


def test_register_pipeline(monkeypatch):
    monkeypatch.setattr(compiler.pipeline, "_PIPELINES", dict(compiler.pipeline._PIPELINES))
    register_pipeline("test_only_dce", [["dce"]])
    assert "test_only_dce" in pipelines()
    (pm,) = get_pipeline("test_only_dce")
    assert [p.name for p in pm.passes] == ["dce"] and not pm.fixed_point


def _messy_model():
    x = tensor_info("x", T.FLOAT, [3, 4])
    return make_model([
        h.make_node("Constant", [], ["k"], value=const(np.full(4, 0.25, np.float32), "kt")),
        h.make_node("Mul", ["k", "four"], ["one"]),          # folds to ones
        h.make_node("Identity", ["x"], ["xi"]),
        h.make_node("Mul", ["xi", "one"], ["m"]),            # x * 1 once folded: removed
        h.make_node("Add", ["m", "bias"], ["a"]),
        h.make_node("Exp", ["a"], ["unused"]),               # dead
        h.make_node("Shape", ["bias"], ["bs"]),              # folds (static)
        h.make_node("Reshape", ["a", "bs2"], ["r"]),
        h.make_node("Concat", ["minus1", "bs"], ["bs2"], axis=0),
        h.make_node("Identity", ["r"], ["y"]),
    ], [x], [tensor_info("y", T.FLOAT, None)],
        [const(np.float32(4.0), "four"), const(np.arange(4), "bias", np.float32),
         const([-1], "minus1", np.int64)])


def test_simplify_pipeline_end_to_end():
    m = _messy_model()
    g = compiler.import_onnx(m)
    ctx = PassContext()
    records = []
    for pm in get_pipeline("simplify"):
        pm.run(g, ctx)
        records.extend(pm.records)
    seen = [r.name for r in records]
    assert op_types(g) == ["Add"]  # the Reshape to [-1, 4] of a [3, 4] is a no-op
    assert [v.name for v in g.inputs] == ["x"] and [v.name for v in g.outputs] == ["y"]
    assert g.outputs[0].shape == (3, 4)
    assert sorted(g.initializers) == sorted(v.name for n in g for v in n.inputs
                                            if v is not None and v.is_const)
    assert seen[0] == seen[-1] == "shape_inference"
    assert any(r.result.modified for r in records if r.name == "constant_folding")
    assert_same_outputs(m, g, bitwise=True)


def _chain_model(n_nodes: int):
    rng = np.random.default_rng(0)
    inits = [const(rng.standard_normal(16) * 0.01, "bias", np.float32),
             const(np.float32(2.0), "two"), const(np.float32(0.5), "half"),
             const(np.ones(16), "ones", np.float32)]
    nodes, prev = [], "x"
    for i in range(n_nodes):
        out = "y" if i == n_nodes - 1 else f"v{i}"
        kind = i % 4
        if kind == 0:
            nodes.append(h.make_node("Add", [prev, "bias"], [out]))
        elif kind == 1:
            nodes.append(h.make_node("Mul", [prev, "two" if i % 8 == 1 else "half"], [out]))
        elif kind == 2:
            nodes.append(h.make_node("Identity", [prev], [out]))
        else:
            nodes.append(h.make_node("Mul", [prev, "ones"], [out]))
        prev = out
    return make_model(nodes, [tensor_info("x", T.FLOAT, [1, 16])],
                      [tensor_info("y", T.FLOAT, [1, 16])], inits)


def test_simplify_pipeline_on_a_20000_node_chain():
    n = 20_000
    m = _chain_model(n)
    g = compiler.import_onnx(m)
    assert len(g) == n
    for pm in get_pipeline("simplify"):
        pm.run(g, PassContext())
    # Identity and Mul-by-ones (half the chain) go; Add and Mul by 2 / 0.5 stay, in order.
    assert len(g) == n // 2
    assert op_types(g) == ["Add", "Mul"] * (n // 4)
    assert [v.name for v in g.inputs] == ["x"] and [v.name for v in g.outputs] == ["y"]
    assert g.outputs[0].shape == (1, 16)
    assert sorted(g.initializers) == ["bias", "half", "two"]
    assert_same_outputs(m, g, bitwise=True)
