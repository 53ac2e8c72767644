"""PassManager and the named-pipeline registry.

A pipeline is an ordered list of pass names; a PassManager runs the passes in order, can repeat
the list until no pass changes the graph (fixed point), times each pass and, when one raises,
says which pass failed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from compiler.errors import CompileError, PassError
from compiler.ir import Graph
from passes.base import Pass, PassContext, PassResult, get_pass

__all__ = ["PassManager", "PassRecord", "get_pipeline", "register_pipeline", "pipelines",
           "split_at_fusion", "DEFAULT_PIPELINE", "UNFUSED_PIPELINE"]


@dataclass
class PassRecord:
    """One pass execution: name, iteration, result and wall time."""

    name: str
    iteration: int
    result: PassResult
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {"pass": self.name, "iteration": self.iteration,
                "modified": self.result.modified, "seconds": round(self.seconds, 4),
                "stats": self.result.stats}


@dataclass
class PassManager:
    """Runs `passes` in order; with `fixed_point`, repeats until nothing changes."""

    passes: Sequence[Pass]
    fixed_point: bool = False
    max_iterations: int = 8
    records: list[PassRecord] = field(default_factory=list)

    def run(self, graph: Graph, ctx: PassContext | None = None,
            after: Callable[[str, Graph], None] | None = None) -> bool:
        """Run the passes; `after(pass_name, graph)` is called after each pass that changed
        the graph (compiler.diagnose replays a pipeline with it to find a pass at fault)."""
        ctx = ctx or PassContext()
        changed_any = False
        for it in range(self.max_iterations if self.fixed_point else 1):
            changed = False
            for p in self.passes:
                if not p.applies_to(ctx):
                    continue
                t0 = time.perf_counter()
                try:
                    result = p.run(graph, ctx)
                except CompileError as e:
                    # keep the subclass and its fields, whatever its __init__ takes
                    named = type(e).__new__(type(e))
                    named.__dict__.update(e.__dict__)
                    named.args = (f"pass {p.name!r} failed: {e}",)
                    raise named from e
                except Exception as e:  # an internal bug: name the pass, keep the traceback
                    raise PassError(
                        f"pass {p.name!r} failed on graph {graph.name!r}: "
                        f"{type(e).__name__}: {e}") from e
                self.records.append(PassRecord(p.name, it, result, time.perf_counter() - t0))
                changed |= result.modified
                if after is not None and result.modified:
                    after(p.name, graph)
            changed_any |= changed
            if not changed:
                break
        return changed_any

    def summary(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self.records]


# A pipeline is a list of stages; each stage is a list of pass names run to a fixed point when
# it holds more than one pass.
_PIPELINES: dict[str, list[list[str]]] = {
    "none": [],
    "simplify": [["shape_inference"],
                 ["identity_elimination", "constant_folding", "dce"],
                 ["shape_inference"]],
    "onnxsim": [["onnxsim"], ["shape_inference"]],
    "fusion": [["shape_inference"],
               ["identity_elimination", "constant_folding", "dce"],
               ["shape_inference"],
               ["fusion"],
               ["dce"],
               ["shape_inference"]],
}
DEFAULT_PIPELINE = "fusion"
UNFUSED_PIPELINE = "simplify"  # what a searched configuration with fusion off compiles with


def register_pipeline(name: str, stages: list[list[str]]) -> None:
    """Register (or replace) a named pipeline made of stages of pass names."""
    _PIPELINES[name] = [list(s) for s in stages]


def pipelines() -> list[str]:
    return sorted(_PIPELINES)


def split_at_fusion(stages: list[PassManager]) -> tuple[list[PassManager], list[PassManager]]:
    """(stages before the first fusion stage, the rest): compile() lowers precision between
    them, and the search's `lower_graph` does the same."""
    at = next((i for i, pm in enumerate(stages) if any(p.name == "fusion" for p in pm.passes)),
              len(stages))
    return stages[:at], stages[at:]


def get_pipeline(name: str) -> list[PassManager]:
    """PassManagers for the stages of the named pipeline."""
    if name not in _PIPELINES:
        raise CompileError(f"unknown pipeline {name!r}; available: {', '.join(pipelines())}")
    return [PassManager([get_pass(n) for n in stage], fixed_point=len(stage) > 1)
            for stage in _PIPELINES[name]]
