"""Models: a small CNN for 28x28 digits, the paper's CIFAR VGGs with BatchNorm, a CIFAR ResNet-18,
and the ``build_model`` registry. All take float (N, C, H, W) images in [0, 1] and return logits."""

from __future__ import annotations

import re
from functools import partial

from torch import nn

from .resnet import ResNet18
from .small_cnn import SmallCNN, TinyCNN
from .vgg import VGG, VGG_CONFIGS

MODELS = {
    "tiny-cnn": TinyCNN,
    "small-cnn": SmallCNN,
    **{name: partial(VGG, name) for name in VGG_CONFIGS},
    "resnet18": ResNet18,
}


def list_models() -> list[str]:
    """The model names :func:`build_model` accepts, sorted (VGG widths such as 'vgg11-w0.5' are
    accepted too without being listed)."""
    return sorted(MODELS)


_SCALED_VGG = re.compile(r"^(vgg\d+)-w(\d+(?:\.\d+)?)$")


def build_model(name: str, num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """A fresh model by registry name (see :func:`list_models`), or ``vgg<depth>-w<width>`` for a
    VGG with every channel count scaled by ``width`` (e.g. ``vgg11-w0.25``)."""
    scaled = _SCALED_VGG.match(name)
    if name not in MODELS and not (scaled and scaled.group(1) in VGG_CONFIGS):
        raise ValueError(f"model must be one of {list_models()} or vgg<depth>-w<width>, got {name!r}")
    if num_classes < 1 or in_channels < 1:
        raise ValueError(f"num_classes and in_channels must be >= 1, got {num_classes}, {in_channels}")
    if name not in MODELS:
        return VGG(scaled.group(1), num_classes=num_classes, in_channels=in_channels, width=float(scaled.group(2)))
    return MODELS[name](num_classes=num_classes, in_channels=in_channels)


__all__ = ["MODELS", "ResNet18", "SmallCNN", "TinyCNN", "VGG", "build_model", "list_models"]
