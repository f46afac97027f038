"""The paper's augmentations in plain torch, batched, on the images' device.

Train: Resize(36) -> RandomCrop(32) -> RandomHorizontalFlip; test: Resize(36) -> CenterCrop(32)
(docs/method.md, for 32x32 CIFAR images). Images are float (N, C, H, W) in [0, 1]. Random draws
come from a CPU ``torch.Generator``, so the same seed gives the same batch on any device.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checks import check_choice, check_int


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of the shorter side to ``size`` px (antialiased when shrinking)."""
    h, w = images.shape[-2:]
    if min(h, w) == size:
        return images
    scale = size / min(h, w)
    out_size = (size, round(w * scale)) if h <= w else (round(h * scale), size)
    return F.interpolate(images, size=out_size, mode="bilinear", align_corners=False,
                         antialias=scale < 1).clamp_(0, 1)


def crop_at(images: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: int) -> torch.Tensor:
    """Per-example crops: ``out[n] = images[n, :, top[n]:top[n]+size, left[n]:left[n]+size]``."""
    n = images.shape[0]
    offsets = torch.arange(size, device=images.device)
    rows = (top.to(images.device)[:, None] + offsets)[:, :, None]          # (N, size, 1)
    cols = (left.to(images.device)[:, None] + offsets)[:, None, :]         # (N, 1, size)
    batch = torch.arange(n, device=images.device)[:, None, None]
    return images.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2).contiguous()


def random_crop(images: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A ``size`` x ``size`` crop of each image at an offset drawn from ``generator`` (uniform over
    the positions that fit); ValueError when the images are smaller than ``size``."""
    h, w = images.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"random_crop size {size} is larger than the images ({h}x{w})")
    n = images.shape[0]
    top = torch.randint(0, h - size + 1, (n,), generator=generator)
    left = torch.randint(0, w - size + 1, (n,), generator=generator)
    return crop_at(images, top, left, size)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """The central ``size`` x ``size`` crop of every image (a view)."""
    h, w = images.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top:top + size, left:left + size]


def random_hflip(images: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5) -> torch.Tensor:
    """Each image mirrored left-right with probability ``p`` (one draw per image from ``generator``)."""
    flip = (torch.rand(images.shape[0], generator=generator) < p).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


class Augmentation:
    """Named train/test transforms. 'none': identity. 'paper': Resize(size+4) -> RandomCrop(size)
    -> RandomHorizontalFlip for training, Resize(size+4) -> CenterCrop(size) for evaluation
    (size = 32 gives the paper's 36/32). 'crop': like 'paper' without the flip (digits)."""

    NAMES = ("none", "paper", "crop")

    def __init__(self, name: str = "none", size: int = 32):
        self.name = check_choice(name, self.NAMES, "augmentation")
        self.size = check_int(size, "size")

    def train(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.name == "none":
            return images
        out = random_crop(resize(images, self.size + 4), self.size, generator)
        return random_hflip(out, generator) if self.name == "paper" else out

    def test(self, images: torch.Tensor) -> torch.Tensor:
        if self.name == "none":
            return images
        return center_crop(resize(images, self.size + 4), self.size)
