"""The deployable bundle: model files + manifest.json, written atomically, checked on load.

A bundle is a folder. `manifest.json` records the source model's sha256, target, backend,
configuration, legality report, predictions, verification, tool versions and the sha256 of
every file. Bundles are assembled in a hidden sibling folder and renamed into place, so a
failed compile never leaves a half-written bundle; `load()` refuses a bundle whose files do not
match their checksums.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from compiler.errors import CompileError, InvalidModelError

__all__ = ["Artifact", "load", "sha256_file", "staging_dir", "commit_bundle", "MANIFEST"]

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


def sha256_file(path: str | os.PathLike, chunk: int = 16 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _checksums(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(root).as_posix()] = sha256_file(p)
    return out


def staging_dir(out_dir: str | os.PathLike | None) -> Path:
    """A fresh folder to assemble a bundle in, on the same filesystem as `out_dir`."""
    if out_dir is None:
        return Path(tempfile.mkdtemp(prefix="edgec-bundle-"))
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.edgec-tmp-", dir=out.parent))


def write_manifest(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    manifest = dict(manifest)
    manifest["format"] = FORMAT_VERSION
    manifest["files"] = _checksums(root)
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True, default=_json_default))
    os.replace(tmp, root / MANIFEST)
    return manifest


def _json_default(o: Any) -> Any:
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (set, frozenset, tuple)):
        return list(o)
    if isinstance(o, Path):
        return str(o)
    return str(o)


def commit_bundle(staging: Path, out_dir: str | os.PathLike) -> Path:
    """Move a finished bundle into `out_dir` in one rename (replacing an older bundle)."""
    out = Path(out_dir).resolve()
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        elif (out / MANIFEST).is_file():
            old = out.with_name(f".{out.name}.edgec-old-{os.getpid()}")
            os.replace(out, old)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
            return out
        else:
            shutil.rmtree(staging, ignore_errors=True)
            raise CompileError(
                f"output folder {str(out)!r} exists and is not an edgec bundle; "
                "choose another --out or remove it")
    os.replace(staging, out)
    return out


class Artifact:
    """A compiled model: its bundle folder, its manifest and (lazily) a runner."""

    def __init__(self, path: str | os.PathLike, manifest: dict[str, Any], *,
                 temporary: bool = False) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self._runner = None
        self._temporary = temporary

    # -- what was chosen and predicted ---------------------------------------------------------
    @property
    def config(self) -> dict[str, Any]:
        return self.manifest.get("config", {})

    @property
    def predicted(self) -> dict[str, Any]:
        return self.manifest.get("predicted", {})

    @property
    def verification(self) -> dict[str, Any] | None:
        return self.manifest.get("verification")

    @property
    def target(self) -> str:
        return self.manifest["target"]

    @property
    def backend(self) -> str:
        return self.manifest["backend"]

    @property
    def files(self) -> list[str]:
        return sorted(self.manifest.get("files", {}))

    # -- use ------------------------------------------------------------------------------------
    def runner(self):
        if self._runner is None:
            from targets.base import get_backend

            self._runner = get_backend(self.backend).load(str(self.path), self.manifest)
        return self._runner

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Execute the compiled model on this machine (where the backend can)."""
        return self.runner().run(feeds)

    def save(self, out_dir: str | os.PathLike) -> Artifact:
        """Copy the bundle to `out_dir` atomically; returns the saved Artifact."""
        out = Path(out_dir).resolve()
        if out == self.path.resolve():
            return self
        stage = staging_dir(out)
        shutil.copytree(self.path, stage, dirs_exist_ok=True)
        final = commit_bundle(stage, out)
        return Artifact(final, json.loads((final / MANIFEST).read_text()))

    def __repr__(self) -> str:
        return f"Artifact({str(self.path)!r}, target={self.target!r}, backend={self.backend!r})"

    def __del__(self) -> None:
        if getattr(self, "_temporary", False):
            shutil.rmtree(self.path, ignore_errors=True)


def load(path: str | os.PathLike) -> Artifact:
    """Open a bundle folder, checking every file against the manifest's sha256."""
    root = Path(path)
    mf = root / MANIFEST
    if not mf.is_file():
        raise InvalidModelError(f"{str(root)!r} is not an edgec bundle (no {MANIFEST})")
    try:
        manifest = json.loads(mf.read_text())
    except json.JSONDecodeError as e:
        raise InvalidModelError(f"{MANIFEST} in {str(root)!r} is corrupt: {e}") from None
    expected = manifest.get("files", {})
    actual = _checksums(root)
    missing = sorted(set(expected) - set(actual))
    if missing:
        raise InvalidModelError(f"bundle {str(root)!r} is missing {', '.join(missing)}")
    bad = sorted(k for k in expected if actual[k] != expected[k])
    if bad:
        raise InvalidModelError(
            f"bundle {str(root)!r}: {', '.join(bad)} changed since it was built "
            "(sha256 mismatch); rebuild it with edgec compile")
    return Artifact(root, manifest)
