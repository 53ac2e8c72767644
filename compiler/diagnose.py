"""Who is to blame when a runtime refuses a graph: the model, or the pass that changed it.

A runtime (ONNX Runtime, OpenVINO, TVM) that fails to load, build or run what edgec emitted
raises its own exception types with messages naming temporary files. Raw, they reach the user
as an internal error (exit 1) about a path they never saw. The question to answer is whose
fault it is, and the runtime itself answers it:

1. the backend is asked to take the user's ORIGINAL model (imported, no pass run) under the
   same configuration, on the same inputs: if it refuses, the model is the problem, and the
   error is a `RuntimeRefusedError` carrying the runtime's reason;
2. otherwise the pipeline is replayed on a fresh copy of the model, and after every pass that
   changed the graph the backend is asked again; the first pass after which it refuses (or the
   step that itself failed) is named in an `InternalCompilerError`: edgec's bug, not the
   model's, and the pass to fix.

This runs only on the failure path, so a successful compile pays nothing for it.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from compiler.errors import (
    CompileError,
    InternalCompilerError,
    RuntimeRefusedError,
    runtime_reason,
)
from compiler.ir import Graph

__all__ = ["backend_refusal", "blame", "StepFailed"]

#: replay(graph, after): runs the compile pipeline on `graph`, calling after(step, graph)
#: whenever a step changed it
Replay = Callable[[Graph, Callable[[str, Graph], None]], None]


class StepFailed(Exception):
    """A pipeline step raised something that is not a CompileError (a runtime's error)."""

    def __init__(self, step: str, error: BaseException) -> None:
        super().__init__(f"{step}: {error}")
        self.step, self.error = step, error


class _Refused(Exception):
    def __init__(self, step: str, why: str) -> None:
        super().__init__(why)
        self.step, self.why = step, why


def backend_refusal(be: Any, graph: Graph, profile: Any, config: Any,
                    feeds: Mapping[str, np.ndarray] | None) -> str | None:
    """Why `be` refuses to emit, build, load or run `graph` (on `feeds`), or None if it
    takes it. Everything happens in a temporary folder removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="edgec-diagnose-") as tmp:
        try:
            be.emit(graph, profile, config, tmp)
            be.build(tmp, profile, config)
            if be.can_run(profile):
                runner = be.load(tmp, {})
            else:
                proxy = be.load_proxy(tmp, {})
                runner = proxy[0] if proxy is not None else None
            if runner is not None and feeds is not None:
                runner.run(dict(feeds))
        except Exception as e:  # noqa: BLE001 - any refusal is the answer sought
            return runtime_reason(e)
    return None


def blame(error: BaseException, step: str, *, be: Any, profile: Any, config: Any,
          fresh: Callable[[], Graph], replay: Replay,
          feeds: Mapping[str, np.ndarray] | None) -> Exception:
    """The exception to raise for `error`, which `step` of the compile hit (see the module
    docstring): RuntimeRefusedError for the model's problem, InternalCompilerError for
    edgec's."""
    reason = runtime_reason(error)
    why = backend_refusal(be, fresh(), profile, config, feeds)
    if why is not None:
        return RuntimeRefusedError(f"{be.name} refuses the model itself: {why}; the model "
                                   "needs fixing, or try another backend")

    def check(name: str, graph: Graph) -> None:
        w = backend_refusal(be, graph, profile, config, feeds)
        if w is not None:
            raise _Refused(name, w)

    culprit = step
    try:
        replay(fresh(), check)
    except _Refused as r:
        culprit, reason = r.step, r.why
    except StepFailed as f:
        culprit, reason = f.step, runtime_reason(f.error)
    except CompileError:  # the replay refused the model after all: report the original error
        pass
    return InternalCompilerError(
        f"edgec bug: {be.name} accepts the model but refuses the graph edgec made from it at "
        f"{culprit!r}: {reason}; please report it (compiling with passes=[] or another "
        "precision may avoid it)", culprit)
