"""A small CNN for 28x28 digits (MNIST-sized inputs; any size works via adaptive pooling)."""

from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """conv3x3(16)-ReLU-maxpool -> conv3x3(32)-ReLU-maxpool -> Linear(128) -> Linear(classes).

    Input: float (N, in_channels, H, W) in [0, 1]; output: logits (N, num_classes). About 0.2M
    parameters and 1.4M multiply-adds per 28x28 image: fast enough for a CPU demo. No
    BatchNorm, so a batch split across ranks gives the same gradient as the whole batch on one.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 16):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(7),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(2 * width * 49, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class TinyCNN(nn.Module):
    """The smallest useful model (tests, smoke runs): conv3x3(8)-ReLU-maxpool -> Linear."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(4),
            nn.Flatten(), nn.Linear(8 * 16, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
