"""A batched iterator over in-memory tensors with seeded, resumable, shardable order.

The order of epoch ``e`` is ``randperm(N, seed + e)``, so it needs no saved state: a resumed
run rebuilds it from (seed, epoch) and skips the batches already done. With ``world_size > 1``
each rank takes every ``world_size``-th index of that order (as ``DistributedSampler`` does),
so the ranks' batches of one step together form the single-process batch of the same step.
"""

from __future__ import annotations

import torch

from ..checks import check_int
from .augment import Augmentation
from .datasets import ImageData, to_float


class TensorLoader:
    """Yields ``(images float (B, C, H, W) in [0, 1] on device, labels int64 (B,))``.

    ``batch_size``: per rank. ``augment``: an :class:`Augmentation`; with ``train=True`` its
    random transform runs on every batch with a generator seeded from (seed, epoch, step, rank).
    """

    def __init__(self, data: ImageData, batch_size: int, shuffle: bool = True, drop_last: bool = False,
                 seed: int = 0, rank: int = 0, world_size: int = 1, augment: Augmentation | None = None,
                 train: bool = True, device: str | torch.device = "cpu"):
        batch_size = check_int(batch_size, "batch_size")
        world_size = check_int(world_size, "world_size")
        rank = check_int(rank, "rank", minimum=0, maximum=world_size, strict_maximum=True)
        self.data, self.batch_size, self.shuffle, self.drop_last = data, batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.augment, self.train, self.device = augment or Augmentation("none"), train, torch.device(device)
        self.epoch, self.start_step = 0, 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        """Select the epoch's order; ``start_step`` skips batches already seen (resume)."""
        self.epoch, self.start_step = epoch, start_step

    def batch_seed(self, step: int) -> int:
        """Seed of the augmentation draws of one batch: a fixed function of (seed, epoch, step, rank)."""
        value = 0
        for part in (self.seed, self.epoch, step, self.rank):
            value = (value * 1_000_003 + part) % (2**61 - 1)
        return value

    def _indices(self) -> torch.Tensor:
        n = len(self.data)
        order = (torch.randperm(n, generator=torch.Generator().manual_seed(self.seed + self.epoch))
                 if self.shuffle else torch.arange(n))
        if self.world_size > 1:
            per_rank = n // self.world_size if self.drop_last else -(-n // self.world_size)
            total = per_rank * self.world_size
            order = torch.cat([order, order[: total - n]]) if total > n else order[:total]
            order = order[self.rank::self.world_size]
        return order

    def __len__(self) -> int:
        n = len(self._indices())
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self):
        indices = self._indices()
        steps = len(self)
        for step in range(self.start_step, steps):
            index = indices[step * self.batch_size:(step + 1) * self.batch_size]
            images = to_float(self.data.images[index].to(self.device, non_blocking=True))
            labels = self.data.labels[index].to(self.device, non_blocking=True)
            if self.train:
                images = self.augment.train(images, torch.Generator().manual_seed(self.batch_seed(step)))
            else:
                images = self.augment.test(images)
            yield images, labels
        self.start_step = 0
