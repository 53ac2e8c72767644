"""A small MLP trained on scikit-learn's digits (8x8, no download), for FPGA accuracy tests.

`digits_mlp`: Flatten -> Linear(64, 64) -> ReLU -> Linear(64, 32) -> ReLU -> Linear(32, 10),
input `pixel_values` [batch, 1, 8, 8] in [0, 1] -> `logits` [batch, 10]; the MLP shape
hls4ml designs are made of (fully unrolled dense layers). Trained like the models of
`compiler.zoo.trained` (fixed seeds, the same 1200 / 597 split, AdamW + one-cycle) and cached
the same way under `<repo>/.cache/trained/digits_mlp-<key>/model.onnx`. It lives in its own
file because `trained`'s cache key hashes that file: adding a model there would retrain the
others.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from compiler.zoo.trained import N_TRAIN, digits_data

__all__ = ["NAME", "SIZE", "calibration_feeds", "get", "test_data"]

NAME = "digits_mlp"
SIZE = 8
_VERSION = "1"
_REPO = Path(__file__).resolve().parents[2]


def test_data() -> tuple[np.ndarray, np.ndarray]:
    """The 597 held-out images [N, 1, 8, 8] and labels."""
    d = digits_data(SIZE)
    return d["test_x"], d["test_y"]


def calibration_feeds(n: int = 256, batch: int = 32) -> list[dict]:
    """`n` training images as feed dicts of `batch` images (never test images)."""
    x = digits_data(SIZE)["train_x"][:n]
    return [{"pixel_values": x[i:i + batch]} for i in range(0, len(x), batch)]


def _train():
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32),
                          nn.ReLU(), nn.Linear(32, 10))
    d = digits_data(SIZE)
    x, y = torch.from_numpy(d["train_x"]), torch.from_numpy(d["train_y"])
    epochs, lr = 40, 1e-2
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=epochs * (N_TRAIN // 32))
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(N_TRAIN, generator=g)
        for i in range(N_TRAIN // 32):
            idx = perm[i * 32:(i + 1) * 32]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def get(cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the trained MLP's ONNX file, training and exporting it on first use."""
    import torch

    key = hashlib.sha256(f"{NAME}|{_VERSION}|{torch.__version__}|"
                         f"{Path(__file__).read_bytes()!r}".encode()).hexdigest()[:12]
    root = Path(cache_dir) if cache_dir is not None else _REPO / ".cache" / "trained"
    final = root / f"{NAME}-{key}"
    path = final / "model.onnx"
    if path.exists():
        return path
    root.mkdir(parents=True, exist_ok=True)
    model = _train()
    tmp = Path(tempfile.mkdtemp(prefix=f".{NAME}-", dir=root))
    try:
        torch.onnx.export(model, (torch.zeros(1, 1, SIZE, SIZE),), str(tmp / "model.onnx"),
                          input_names=["pixel_values"], output_names=["logits"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=17, dynamo=False)
        try:
            os.rename(tmp, final)
        except OSError:  # another process won the race
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path
