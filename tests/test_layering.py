"""The import-layering check (tools/check_imports.py): the repository passes it, and it fails,
naming them, on a deliberate cycle and a deliberate upward import in a throwaway package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOOL = ROOT / "tools" / "check_imports.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True,
                          timeout=120)


def test_repository_has_no_import_cycle_and_no_upward_import():
    proc = _run()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 cyclic components (0 cycles), 0 upward imports" in proc.stdout


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_a_cycle_and_an_upward_import_fail_and_are_named(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        # a cycle through a function-level relative import: a -> b -> a
        "pkg/a.py": "from pkg import b\n",
        "pkg/b.py": "def f():\n    from . import a\n    return a\n",
        # an upward import (lazy, absolute) from the low layer; no cycle
        "pkg/base.py": "def g():\n    import pkg.top\n    return pkg.top\n",
        "pkg/top.py": "from typing import TYPE_CHECKING\n\nif TYPE_CHECKING:\n"
                      "    from pkg.base import g  # annotations only: no edge, no cycle\n",
        # a package re-exporting from its own submodule: an edge, not a cycle
        "pkg/sub/__init__.py": "from .leaf import Y\n",
        "pkg/sub/leaf.py": "Y = 2\n",
        # a cycle through a package __init__ that importing a submodule runs first:
        # c -> pkg.eager.leaf runs pkg/eager/__init__, which imports c
        "pkg/c.py": "from pkg.eager.leaf import Z\n",
        "pkg/eager/__init__.py": "from pkg import c\n",
        "pkg/eager/leaf.py": "Z = 3\n",
    })
    layers = ["--layer", "low=pkg.a,pkg.b,pkg.base,pkg.sub.*,pkg.c,pkg.eager.*",
              "--layer", "high=pkg,pkg.top"]
    proc = _run("--root", str(tmp_path), "--package", "pkg", *layers)
    out = proc.stdout
    assert proc.returncode == 1, out + proc.stderr
    assert "import cycle among 2 modules (1 cycles): pkg.a, pkg.b" in out
    assert "pkg.a -> pkg.b -> pkg.a" in out
    assert "upward import: pkg.base (layer low) imports pkg.top (layer high)" in out
    assert "import cycle among 2 modules (1 cycles): pkg.c, pkg.eager" in out
    assert "pkg.c -> pkg.eager -> pkg.c" in out
    assert "2 cyclic components (2 cycles), 1 upward imports" in out
    assert "pkg.sub" not in out


def test_the_same_package_without_them_passes(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg import b\n",
        "pkg/b.py": "X = 0\n",
        "pkg/base.py": "def g():\n    return 1\n",
        # a module that does not exist (yet) is no edge, only a note
        "pkg/top.py": "from pkg.base import g\n\n\ndef h():\n    from pkg.gone import x\n",
    })
    proc = _run("--root", str(tmp_path), "--package", "pkg",
                "--layer", "low=pkg.a,pkg.b,pkg.base", "--layer", "high=pkg,pkg.top")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "5 modules, 2 imports: 0 cyclic components (0 cycles), 0 upward imports" in \
        proc.stdout
    assert "note: pkg.top imports pkg.gone, which does not exist" in proc.stdout


def test_a_product_module_importing_the_test_models_fails(tmp_path):
    """With the repository's layers, a module no layer lists is driver level: it may not import
    compiler.zoo (test and demo models), while compiler/demo.py may. A name the package loads
    lazily (`_LAZY`) counts as an import of the module that defines it."""
    _write(tmp_path, {
        "compiler/__init__.py": "_LAZY = {'compile': 'compiler.driver'}\n",
        "compiler/driver.py": "def compile():\n    pass\n",
        "compiler/ir.py": "def f():\n    from compiler import compile\n",
        "compiler/new_api.py": "def f():\n    from compiler.zoo import models\n",
        "compiler/demo.py": "from compiler.zoo import models\n",
        "compiler/zoo/__init__.py": "",
        "compiler/zoo/models.py": "",
    })
    proc = _run("--root", str(tmp_path), "--package", "compiler")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "upward import: compiler.new_api (layer driver) imports compiler.zoo.models " \
        "(layer zoo)" in proc.stdout
    assert "upward import: compiler.ir (layer ir) imports compiler.driver (layer driver)" in \
        proc.stdout
    assert "compiler.demo" not in proc.stdout
