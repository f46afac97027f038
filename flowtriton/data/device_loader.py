"""A loader whose data and augmentation live on the training device.

The uint8 images are copied to the device once; each batch is then gathered, converted to float
and augmented there (the paper's Resize -> RandomCrop -> flip of :mod:`.augment`), with every
random draw (epoch order, crop offsets, flips) made by a generator on that device. A training
step therefore issues no host-to-device copy and no host sync.

Order and draws are fixed functions of (seed, epoch, step), so a resumed run rebuilds them
without saved state: ``set_epoch(epoch, start_step)`` skips the batches already done. The draws
differ between devices (CPU and CUDA generators are different streams), not between runs.
"""

from __future__ import annotations

import torch

from ..checks import check_int
from .augment import Augmentation, center_crop, crop_at, resize
from .datasets import ImageData, to_float


def _mix(*parts: int) -> int:
    """A seed that is a fixed function of ``parts`` (non-negative ints)."""
    value = 0
    for part in parts:
        value = (value * 1_000_003 + part) % (2**61 - 1)
    return value


class DeviceLoader:
    """Yields ``(images float (B, C, size, size) in [0, 1], labels int64 (B,))`` on ``device``.

    ``data``: uint8 images (N, C, H, W) and labels, copied to ``device`` once here.
    ``augment``: an :class:`Augmentation` ('paper', 'crop' or 'none'); ``train=True`` applies its
    random transform (draws on ``device``), ``train=False`` its test transform, in order.
    ``drop_last``: leave out the last incomplete batch (training); ``shuffle``: a new order each
    epoch.
    """

    def __init__(self, data: ImageData, batch_size: int, device: str | torch.device,
                 augment: Augmentation | None = None, train: bool = True, shuffle: bool | None = None,
                 drop_last: bool = False, seed: int = 0):
        batch_size = check_int(batch_size, "batch_size")
        if data.images.dtype != torch.uint8:
            raise TypeError(f"data.images must be uint8 (the copy on the device stays uint8), got {data.images.dtype}")
        self.device = torch.device(device)
        self.images = data.images.to(self.device)
        self.labels = data.labels.to(self.device)
        self.batch_size, self.train, self.drop_last, self.seed = batch_size, train, drop_last, seed
        self.shuffle = train if shuffle is None else shuffle
        self.augment = augment or Augmentation("none")
        self.epoch, self.start_step = 0, 0

    def __len__(self) -> int:
        n = self.images.shape[0]
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select epoch ``epoch``'s order; the next iteration starts at batch ``start_step``."""
        self.epoch, self.start_step = epoch, start_step

    def _generator(self, *parts: int) -> torch.Generator:
        return torch.Generator(device=self.device).manual_seed(_mix(self.seed, *parts))

    def order(self) -> torch.Tensor:
        """The epoch's example order (int64 on the device)."""
        n = self.images.shape[0]
        if not self.shuffle:
            return torch.arange(n, device=self.device)
        return torch.randperm(n, generator=self._generator(self.epoch), device=self.device)

    def transform(self, images: torch.Tensor, step: int) -> torch.Tensor:
        """uint8 batch -> float batch after the train (random, seeded by epoch and step) or test transform."""
        images = to_float(images)
        name, size = self.augment.name, self.augment.size
        if name == "none":
            return images
        images = resize(images, size + 4)
        if not self.train:
            return center_crop(images, size)
        gen = self._generator(self.epoch, step + 1)
        n, slack = images.shape[0], images.shape[-1] - size
        top = torch.randint(0, images.shape[-2] - size + 1, (n,), generator=gen, device=self.device)
        left = torch.randint(0, slack + 1, (n,), generator=gen, device=self.device)
        images = crop_at(images, top, left, size)
        if name == "paper":
            flip = torch.rand(n, generator=gen, device=self.device) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
        return images

    def __iter__(self):
        order = self.order()
        for step in range(self.start_step, len(self)):
            index = order[step * self.batch_size:(step + 1) * self.batch_size]
            yield self.transform(self.images[index], step), self.labels[index]
        self.start_step = 0
