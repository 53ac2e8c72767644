"""Errors a user can act on.

Every problem caused by the user's input (an unreadable model, an unknown target, an impossible
constraint, an op a target cannot run) raises a `CompileError` subclass whose message says what
is wrong and what to do. The CLI prints that message on one line and exits with status 2; any
other exception is an internal bug (exit status 1).

When a runtime refuses a graph, who is to blame decides the class: a runtime that refuses the
user's ORIGINAL model raises `RuntimeRefusedError` (the model's problem, with the runtime's
reason); a runtime that refuses a graph edgec produced from a model it accepts raises
`InternalCompilerError`, naming the pass that produced it. That one is not a CompileError: it
is edgec's bug, and the CLI reports it as such (exit status 1).
"""

from __future__ import annotations

import re
import tempfile

__all__ = [
    "CompileError",
    "InvalidModelError",
    "ExternalDataError",
    "UnknownTargetError",
    "UnknownBackendError",
    "ConstraintError",
    "UnsupportedOpError",
    "MissingDependencyError",
    "PassError",
    "VerificationError",
    "RuntimeRefusedError",
    "ResourceError",
    "InternalCompilerError",
    "runtime_reason",
]


class CompileError(Exception):
    """Base class of every error caused by the user's input."""


class InvalidModelError(CompileError):
    """The model cannot be read or is not a valid ONNX graph."""


class ExternalDataError(InvalidModelError):
    """An external-data reference is unsafe (absolute, escapes the model folder) or missing."""


class UnknownTargetError(CompileError):
    """The target device name is not in the device table."""


class UnknownBackendError(CompileError):
    """The backend name is not registered or does not serve the target."""


class ConstraintError(CompileError):
    """A user constraint cannot be met by any configuration."""


class UnsupportedOpError(CompileError):
    """A node cannot run on the chosen target/backend and no fallback is allowed."""


class MissingDependencyError(CompileError):
    """An optional SDK is needed but not installed; the message names the extra."""

    def __init__(self, package: str, extra: str, purpose: str = "") -> None:
        why = f" {purpose}" if purpose else ""
        super().__init__(
            f"{package} is not installed{why}; install it with: pip install 'edgec[{extra}]'"
        )
        self.package = package
        self.extra = extra


class PassError(CompileError):
    """A pass failed; the message names the pass."""


class VerificationError(CompileError):
    """The compiled artifact's outputs do not match the reference within tolerance."""


class RuntimeRefusedError(InvalidModelError):
    """A runtime (ONNX Runtime, OpenVINO, TVM) refuses the user's model as given; the message
    carries the runtime's own reason, without the temporary paths it names."""


class ResourceError(CompileError):
    """Building would allocate more memory than the machine has free or the configured cap
    (`options={"memory_cap_mb": N}`) allows; checked before allocating."""


class InternalCompilerError(Exception):
    """edgec produced a graph a runtime refuses although the runtime accepts the original
    model: a bug in the named pass, not a problem of the model (CLI exit status 1)."""

    def __init__(self, message: str, pass_name: str | None = None) -> None:
        super().__init__(message)
        self.pass_name = pass_name


_ORT_PREFIX = re.compile(r"\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*\w+\s*:\s*")
_LOAD_FROM = re.compile(r"Load model from .*? failed:\s*")
_SOURCE_LINE = re.compile(r"^(Exception from |Check '.*' failed at )?\S*src/\S+:\d+:?\s*$")
_SOURCE_REF = re.compile(r"(/onnxruntime_src|\S*src/\S+\.(cc|cpp|h|hpp)):\d+( \S+)?")


def runtime_reason(error: BaseException, limit: int = 300) -> str:
    """A runtime's error as one line a user can read: without ONNX Runtime's status prefix,
    without the source-file trail OpenVINO prints, and without temporary paths (a staging
    folder's name means nothing to the user; its file's base name is kept)."""
    text = _ORT_PREFIX.sub("", str(error))
    text = _LOAD_FROM.sub("", text)
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not _SOURCE_LINE.match(ln)]
    text = _SOURCE_REF.sub("", " ".join(lines))
    tmp = re.escape(tempfile.gettempdir().rstrip("/"))
    text = re.sub(tmp + r"/\S*?([^/\s]+)(?=[\s:,;)'\"]|$)", r"\1", text)
    text = " ".join(text.split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
