"""Small models trained on scikit-learn's digits, for accuracy tests of lowered precisions.

Random weights say nothing about whether quantization keeps accuracy; these two models are
really trained (seconds on a CPU, fixed seeds) on the 1797 8x8 digits that ship with
scikit-learn (no download), upscaled bilinearly to `SIZE` x `SIZE`, in [0, 1]:

- `digits_cnn`: conv-bn-relu blocks incl. a stride-2 conv, a depthwise + pointwise pair,
  global average pooling and a Linear (the layer mix of a mobile CNN);
- `digits_vit`: 4x4 patch embedding (Conv), 2 pre-norm transformer blocks (LayerNorm,
  explicit MatMul/Softmax/MatMul attention, GELU MLP), mean pooling, Linear;
- `digits_mlp` (`MLP`, not in `NAMES`: the int8/mixed tests iterate those): the raw 8x8
  images, Flatten -> Linear(64, 64) -> ReLU -> Linear(64, 32) -> ReLU -> Linear(32, 10), the
  shape of an hls4ml FPGA design (`input_size` gives each model's image size).

Both are exported with `torch.onnx.export(dynamo=False, opset_version=17)`, input
`pixel_values` [batch, 1, SIZE, SIZE] -> `logits` [batch, 10], and cached under
`<repo>/.cache/trained/<name>-<key>/model.onnx` (key: builder version, torch version), written
to a temporary folder renamed into place, with the torch state dict beside it (`torch_model`).
The split is fixed: 1200 train, 597 held-out test.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

__all__ = ["MLP", "NAMES", "SIZE", "accuracy", "calibration_feeds", "digits_data", "get",
           "input_size", "torch_model"]

NAMES = ("digits_cnn", "digits_vit")
MLP = "digits_mlp"
SIZE = 16
N_TRAIN = 1200
_VERSION = "1"
_REPO = Path(__file__).resolve().parents[2]


def digits_data(size: int = SIZE) -> dict[str, np.ndarray]:
    """{"train_x", "train_y", "test_x", "test_y"}: float32 [N, 1, size, size], int64 labels."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None]
    if size != 8:
        import torch

        with torch.no_grad():
            x = torch.nn.functional.interpolate(torch.from_numpy(x), size=(size, size),
                                                mode="bilinear", align_corners=False).numpy()
    y = d.target.astype(np.int64)
    perm = np.random.default_rng(0).permutation(len(y))
    tr, te = perm[:N_TRAIN], perm[N_TRAIN:]
    return {"train_x": np.ascontiguousarray(x[tr]), "train_y": y[tr],
            "test_x": np.ascontiguousarray(x[te]), "test_y": y[te]}


def input_size(name: str) -> int:
    """The image side `name` takes (8 for the MLP, `SIZE` for the others)."""
    return 8 if name == MLP else SIZE


def calibration_feeds(n: int = 64, batch: int = 8, size: int = SIZE) -> list[dict]:
    """`n` training images as feed dicts of `batch` images (never test images)."""
    x = digits_data(size)["train_x"][:n]
    return [{"pixel_values": x[i:i + batch]} for i in range(0, len(x), batch)]


def _build(name: str):
    import torch
    from torch import nn

    class CNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()

            def block(ci, co, k=3, s=1, g=1):
                return [nn.Conv2d(ci, co, k, s, k // 2, groups=g, bias=False),
                        nn.BatchNorm2d(co), nn.ReLU()]

            self.features = nn.Sequential(
                *block(1, 16), *block(16, 32, s=2), *block(32, 32), *block(32, 32, g=32),
                *block(32, 64, k=1), *block(64, 64, s=2), nn.AdaptiveAvgPool2d(1),
                nn.Flatten())
            self.head = nn.Linear(64, 10)

        def forward(self, x):
            return self.head(self.features(x))

    class Attention(nn.Module):
        def __init__(self, dim: int, heads: int) -> None:
            super().__init__()
            self.heads, self.hd = heads, dim // heads
            self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

        def forward(self, x):
            b, n, d = x.shape
            qkv = self.qkv(x).reshape(b, n, 3, self.heads, self.hd).permute(2, 0, 3, 1, 4)
            q, k, v = qkv[0], qkv[1], qkv[2]
            att = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.hd ** -0.5, -1)
            return self.proj(torch.matmul(att, v).transpose(1, 2).reshape(b, n, d))

    class Block(nn.Module):
        def __init__(self, dim: int, heads: int) -> None:
            super().__init__()
            self.n1, self.n2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.att = Attention(dim, heads)
            self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

        def forward(self, x):
            x = x + self.att(self.n1(x))
            return x + self.mlp(self.n2(x))

    class ViT(nn.Module):
        def __init__(self, dim: int = 64, depth: int = 2, heads: int = 4, patch: int = 4):
            super().__init__()
            self.embed = nn.Conv2d(1, dim, patch, patch)
            self.pos = nn.Parameter(torch.zeros(1, (SIZE // patch) ** 2, dim))
            self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
            self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, 10)

        def forward(self, x):
            x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
            return self.head(self.norm(self.blocks(x)).mean(1))

    if name == MLP:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32),
                             nn.ReLU(), nn.Linear(32, 10))
    return CNN() if name == "digits_cnn" else ViT()


def _train(name: str):
    import torch

    torch.manual_seed(0)
    model = _build(name)
    d = digits_data(input_size(name))
    x, y = torch.from_numpy(d["train_x"]), torch.from_numpy(d["train_y"])
    epochs, lr = {"digits_cnn": (12, 3e-3), "digits_vit": (15, 3e-3), MLP: (40, 1e-2)}[name]
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


def _key(name: str) -> str:
    import torch

    blob = f"{name}|{_VERSION}|{SIZE}|{torch.__version__}|{Path(__file__).read_bytes()!r}"
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def get(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of the trained model's ONNX file, training and exporting it on first use."""
    if name not in (*NAMES, MLP):
        raise ValueError(f"unknown trained model {name!r}; known: {', '.join(NAMES)}, {MLP}")
    root = Path(cache_dir) if cache_dir is not None else _REPO / ".cache" / "trained"
    final = root / f"{name}-{_key(name)}"
    path = final / "model.onnx"
    if path.exists():
        return path
    import torch

    root.mkdir(parents=True, exist_ok=True)
    model = _train(name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        torch.save(model.state_dict(), tmp / "state_dict.pt")  # for torch-side comparisons
        size = input_size(name)
        torch.onnx.export(model, (torch.zeros(1, 1, size, size),), str(tmp / "model.onnx"),
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


def torch_model(name: str, cache_dir: str | os.PathLike | None = None):
    """The trained torch.nn.Module behind `get(name)` (same weights), in eval mode."""
    import torch

    path = get(name, cache_dir).parent / "state_dict.pt"
    model = _build(name)
    if not path.exists():  # cached before state dicts were kept: train again (fixed seeds)
        model = _train(name)
        torch.save(model.state_dict(), path)
        return model
    model.load_state_dict(torch.load(path, weights_only=True))
    return model.eval()


def accuracy(model, x: np.ndarray, y: np.ndarray, batch: int = 128) -> float:
    """Top-1 accuracy (%) of an ONNX model (path, bytes or ModelProto) in ONNX Runtime."""
    from passes.calibration import make_session, run_model

    if isinstance(model, (str, os.PathLike)):
        model = Path(model).read_bytes()
    sess = make_session(model)
    pred = [np.argmax(run_model(sess, {"pixel_values": x[i:i + batch]})["logits"], -1)
            for i in range(0, len(x), batch)]
    return float(np.mean(np.concatenate(pred) == y) * 100.0)
