"""ResNet-50 (v1.5, He et al. 2016; stride on the 3x3 conv as in torchvision and MLPerf), defined
here in plain torch so no torchvision is needed. Random weights (seed 0): the cost model only
needs the architecture. 25.6 M parameters, 4.1 GMACs at 224x224.

`onnx_path(size)` exports it once (TorchScript exporter, `dynamo=False`, opset 17, constant
folding on, so BatchNormalization folds into the convolutions as TensorRT and ONNX Runtime would
do anyway) and caches it under `<repo>/.cache/resnet50/`.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["resnet50", "onnx_path", "CACHE_DIR"]

CACHE_DIR = Path(__file__).resolve().parents[2] / ".cache" / "resnet50"
LAYERS = (3, 4, 6, 3)


def resnet50(num_classes: int = 1000):
    """The torch.nn.Module (eval mode)."""
    import torch
    from torch import nn

    class Bottleneck(nn.Module):
        def __init__(self, cin: int, width: int, stride: int) -> None:
            super().__init__()
            cout = width * 4
            self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.relu(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
            return self.relu(y + (x if self.down is None else self.down(x)))

    class ResNet50(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64),
                                      nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
            blocks, cin = [], 64
            for i, n in enumerate(LAYERS):
                width = 64 * 2**i
                for j in range(n):
                    blocks.append(Bottleneck(cin, width, 2 if (j == 0 and i > 0) else 1))
                    cin = width * 4
            self.blocks = nn.Sequential(*blocks)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(cin, num_classes)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.blocks(self.stem(x))), 1))

    torch.manual_seed(0)
    return ResNet50().eval()


def onnx_path(size: int = 224, batch: int = 1, cache_dir: str | os.PathLike | None = None
              ) -> Path:
    """Path of ResNet-50 exported to ONNX for input [batch, 3, size, size], built once."""
    import torch

    root = Path(cache_dir) if cache_dir is not None else CACHE_DIR
    path = root / f"resnet50-{batch}x{size}-torch{torch.__version__}.onnx"
    if path.is_file():
        return path
    root.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with torch.no_grad():
        torch.onnx.export(resnet50(), (torch.zeros(batch, 3, size, size),), str(tmp),
                          dynamo=False, opset_version=17, input_names=["pixel_values"],
                          output_names=["logits"], do_constant_folding=True)
    os.replace(tmp, path)
    return path
