"""Errors a user can act on.

Every problem caused by the user's input (an unreadable model, an unknown target, an impossible
constraint, an op a target cannot run) raises a `CompileError` subclass whose message says what
is wrong and what to do. The CLI prints that message on one line and exits with status 2; any
other exception is an internal bug (exit status 1).
"""

from __future__ import annotations

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
