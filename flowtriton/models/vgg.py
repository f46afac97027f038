"""CIFAR-style VGG-11/13/16/19 with BatchNorm, as in the paper's code (docs/method.md).

conv3x3-BN-ReLU blocks with 2x2 max-pools ('M'), then AvgPool -> Linear(512, classes). Input:
float (N, C, 32, 32) in [0, 1], no mean/std normalization. ``width`` scales every channel count
(registry names ``vgg11-w0.25`` etc.; 1.0 is the paper's network) for quick CPU runs.
"""

from __future__ import annotations

import torch
from torch import nn

VGG_CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"],
}


class VGG(nn.Module):
    def __init__(self, depth: str = "vgg11", num_classes: int = 10, in_channels: int = 3, width: float = 1.0):
        super().__init__()
        if depth not in VGG_CONFIGS:
            raise ValueError(f"depth must be one of {sorted(VGG_CONFIGS)}, got {depth!r}")
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        layers, channels = [], in_channels
        for item in VGG_CONFIGS[depth]:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                out = max(1, int(round(item * width)))
                layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
                channels = out
        layers.append(nn.AdaptiveAvgPool2d(1))  # the paper's AvgPool(1) on the 1x1 map of 32x32 inputs
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))
