"""Memory guards: an allocation's size is checked before it is made.

Why: a model is data, and its declared sizes are the user's input. A dim of 2^31-1 makes
verification generate terabytes of inputs; a Range or ConstantOfShape with a huge count makes
constant folding do the same. Left alone, numpy raises MemoryError (an internal error to the
CLI) or, worse, the kernel's overcommit lets the allocation succeed and the machine swaps or
kills the process. Every such buffer is sized first (element count times item size, in Python
integers, so nothing overflows) and refused with a `ResourceError` naming what needed it.

The limit: half of the memory available when the check runs (psutil), and no more than the
cap `options={"memory_cap_mb": N}` (CLI: `--option memory_cap_mb=N`) when one is given.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from compiler.errors import ConstraintError, ResourceError

__all__ = ["CAP_OPTION", "check_allocation", "memory_limit", "nbytes"]

CAP_OPTION = "memory_cap_mb"
_AVAILABLE_SHARE = 0.5  # of the memory free now: the runtimes and the graph need the rest


def nbytes(shape: Iterable[int], dtype: Any) -> int:
    """Bytes of an array of `shape` and `dtype`, exactly (no int64 overflow)."""
    return math.prod(int(d) for d in shape) * np.dtype(dtype).itemsize


def memory_limit(options: Mapping[str, Any] | None = None) -> tuple[int, str]:
    """(bytes edgec may allocate for one buffer now, where that limit comes from)."""
    import psutil

    free = int(psutil.virtual_memory().available * _AVAILABLE_SHARE)
    cap = (options or {}).get(CAP_OPTION)
    if cap is None:
        return free, "half the memory available"
    try:
        cap_bytes = int(float(cap) * 2**20)
    except (TypeError, ValueError):
        raise ConstraintError(f"option {CAP_OPTION}={cap!r} is not a number of MB") from None
    if cap_bytes <= 0:
        raise ConstraintError(f"option {CAP_OPTION}={cap!r} must be positive")
    if cap_bytes < free:
        return cap_bytes, f"the cap {CAP_OPTION}={cap}"
    return free, "half the memory available"


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MB" if n < 2**40 else f"{n / 2**40:,.1f} TB"


def check_allocation(size: int, what: str, options: Mapping[str, Any] | None = None,
                     hint: str = "") -> None:
    """Raise ResourceError when `size` bytes for `what` exceed the limit."""
    limit, source = memory_limit(options)
    if size > limit:
        tail = f"; {hint}" if hint else ""
        raise ResourceError(f"{what} would need {_mb(size)}, more than {source} allows "
                            f"({_mb(limit)}){tail}")
