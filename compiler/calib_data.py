"""Calibration data from a folder of .npy / .npz files (`edgec compile --calib DIR`).

Layouts (files are read in sorted name order, lazily, one at a time, so a large folder never
sits in memory; the result can be iterated several times):

- `*.npz`: one feed per file; keys are input names (a single-input model also accepts any one
  key, e.g. numpy's default `arr_0`);
- `*.npy` for a single-input model: one feed per file;
- `<input_name>.npy` for every input: arrays stacked along axis 0, split into feeds of
  `batch_size` samples.

An array whose rank is one less than the input's gets a batch axis; floats are cast to the
input's dtype (float64 -> float32).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from compiler.errors import CompileError
from compiler.ir import Graph, dtype_to_numpy

__all__ = ["CalibrationSet", "load_calibration"]


class CalibrationSet:
    """A re-iterable sequence of feed dicts read from disk on demand."""

    def __init__(self, path: Path, inputs: dict[str, tuple[int | None, np.dtype | None]],
                 batch_size: int = 1, limit: int | None = None) -> None:
        self.path, self.inputs, self.batch_size, self.limit = path, inputs, batch_size, limit
        files = sorted(p for p in path.iterdir() if p.suffix in (".npy", ".npz")) \
            if path.is_dir() else [path]
        if not files:
            raise CompileError(f"calibration folder {str(path)!r} holds no .npy or .npz files")
        self.files = files
        names = set(inputs)
        self.stacked = len(names) > 1 and {p.stem for p in files if p.suffix == ".npy"} >= names
        if len(names) > 1 and not self.stacked and any(p.suffix == ".npy" for p in files):
            raise CompileError(
                f"the model has inputs {sorted(names)}: use .npz files keyed by input name, or "
                "one <input_name>.npy per input (samples stacked on axis 0)")

    def _fit(self, name: str, arr: np.ndarray) -> np.ndarray:
        rank, dt = self.inputs.get(name, (None, None))
        arr = np.asarray(arr)
        if rank is not None and arr.ndim == rank - 1:
            arr = arr[None]
        if dt is not None and arr.dtype != dt and (np.issubdtype(arr.dtype, np.floating) ==
                                                   np.issubdtype(dt, np.floating)):
            arr = arr.astype(dt)
        return arr

    def _feeds(self) -> Iterator[dict[str, np.ndarray]]:
        names = list(self.inputs)
        if self.stacked:
            arrays = {n: np.load(self.path / f"{n}.npy", mmap_mode="r") for n in names}
            count = min(len(a) for a in arrays.values())
            for i in range(0, count, self.batch_size):
                yield {n: self._fit(n, np.array(a[i:i + self.batch_size]))
                       for n, a in arrays.items()}
            return
        for f in self.files:
            if f.suffix == ".npy":
                yield {names[0]: self._fit(names[0], np.load(f))}
                continue
            with np.load(f) as z:
                keys = list(z.keys())
                if set(names) <= set(keys):
                    yield {n: self._fit(n, z[n]) for n in names}
                elif len(names) == 1 and len(keys) == 1:
                    yield {names[0]: self._fit(names[0], z[keys[0]])}
                else:
                    raise CompileError(
                        f"calibration file {f.name!r} has arrays {keys}; the model needs "
                        f"{names}")

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for i, feeds in enumerate(self._feeds()):
            if self.limit is not None and i >= self.limit:
                return
            yield feeds

    def __repr__(self) -> str:
        return f"CalibrationSet({str(self.path)!r}, {len(self.files)} files)"


def load_calibration(path: str | os.PathLike, graph: Graph | None = None, *,
                     batch_size: int = 1, limit: int | None = None) -> CalibrationSet:
    """Calibration feeds from a folder (or one .npz/.npy file) for `graph`'s inputs."""
    p = Path(path)
    if not p.exists():
        raise CompileError(f"calibration path {str(p)!r} does not exist")
    if graph is not None:
        inputs = {v.name: (v.rank, dtype_to_numpy(v.dtype) if v.dtype else None)
                  for v in graph.inputs if v.const is None}
    else:
        inputs = {}
    if not inputs:
        if p.is_dir() and all(f.suffix == ".npy" for f in p.iterdir()
                              if f.suffix in (".npy", ".npz")):
            raise CompileError("pass the model graph to read .npy calibration files")
        first = next((f for f in sorted(p.iterdir()) if f.suffix == ".npz"), p) \
            if p.is_dir() else p
        with np.load(first) as z:
            inputs = {k: (None, None) for k in z.keys()}
    return CalibrationSet(p, inputs, batch_size, limit)
