"""Package attributes loaded on first use (PEP 562 module `__getattr__`).

A package `__init__` runs whenever any of its submodules is imported, from any layer. One that
re-exported its higher-level API eagerly would make every low-level import load (and depend
on) that API: `compiler/__init__.py` would load the driver for `import compiler.ir`. Such a
package declares `_LAZY = {name: module}` as a literal (tools/check_imports.py reads it to
resolve `from package import name`) and sets `__getattr__, __dir__ = lazy_exports(...)`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, names: Mapping[str, str], namespace: dict[str, Any]
                 ) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """(`__getattr__`, `__dir__`) for `package`: `names` maps an attribute to the module that
    defines it; the first access imports it and caches the value in `namespace`."""

    def __getattr__(name: str) -> Any:
        if name in names:
            value = getattr(importlib.import_module(names[name]), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
