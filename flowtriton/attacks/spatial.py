"""Rotation + translation search (Engstrom et al. 2019; foolbox 3's SpatialAttack), as flows."""

from __future__ import annotations

import itertools
import math

import torch

from ..ops.warp import warp
from ..ops.validation import check_choice
from .base import (PADDING_MODES, FlowAttack, check_int, check_number, check_seed,
                   resolve_generator, uniform)


def rigid_flow(angles_deg: torch.Tensor, translations: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(T, 2, H, W) pixel flows of rotations about the image centre followed by translations.

    ``angles_deg`` (T,): counter-clockwise as displayed (rows grow downwards), degrees; 90 equals
    ``torch.rot90(image, 1, dims=(-2, -1))`` on square images. ``translations`` (T, 2): (x, y)
    shifts in pixels (+x right, +y down). A point q of the image moves to
    ``R (q - c) + c + t``, so the output pixel p reads the image at ``c + R^-1 (p - c - t)``.
    """
    dtype = translations.dtype
    device = translations.device
    theta = angles_deg.to(dtype) * (math.pi / 180.0)
    cos, sin = theta.cos()[:, None, None], theta.sin()[:, None, None]
    cy, cx = (height - 1) / 2.0, (width - 1) / 2.0
    rows = torch.arange(height, dtype=dtype, device=device).view(1, height, 1)
    cols = torch.arange(width, dtype=dtype, device=device).view(1, 1, width)
    u = cols - cx - translations[:, 0, None, None]
    v = rows - cy - translations[:, 1, None, None]
    src_x = cx + cos * u - sin * v
    src_y = cy + sin * u + cos * v
    return torch.stack((src_x - cols, src_y - rows), dim=1)


class RotationTranslation(FlowAttack):
    """Try rotations and translations; per example keep the first that fools the model, else the
    one with the largest cross-entropy (the worst case). foolbox 3's SpatialAttack defaults.

    Arguments:
      max_rotation: degrees in [0, 180] (grid from -max to +max). max_translation: pixels, per
        axis, >= 0.
      num_rotations, num_translations: grid points per parameter (rotations x x-shifts x y-shifts).
      random_samples: if set, that many transforms drawn uniformly from the same ranges replace
        the grid (foolbox's ``grid_search=False``); uses ``generator`` / ``seed``, else torch's
        global generator.
      padding_mode: warp padding ('zeros': the area rotated in is black).
      max_batch: most warped images per model call (transforms are batched together).
    The identity is always tried first. ``result.iterations``: transforms tried (all of them).
    ``result.info``: 'angle' (N,) degrees, 'translation' (N, 2) pixels (x, y) of the chosen one.
    """

    def __init__(self, model, max_rotation: float = 30.0, max_translation: float = 3.0,
                 num_rotations: int = 5, num_translations: int = 5, random_samples: int | None = None,
                 padding_mode: str = "zeros", targeted: bool = False, max_batch: int = 1024,
                 generator: torch.Generator | None = None, seed: int | None = None,
                 backend: str | None = None):
        super().__init__(model, targeted=targeted, backend=backend)
        self.max_rotation = check_number(max_rotation, "max_rotation")
        if self.max_rotation > 180:
            raise ValueError(f"max_rotation must lie in [0, 180] degrees (the rotations span -max_rotation to "
                             f"+max_rotation; 180 already covers every angle), got {self.max_rotation:g}")
        self.max_translation = check_number(max_translation, "max_translation")
        self.num_rotations = check_int(num_rotations, "num_rotations")
        self.num_translations = check_int(num_translations, "num_translations")
        self.random_samples = None if random_samples is None else check_int(random_samples, "random_samples")
        self.padding_mode = check_choice(padding_mode, PADDING_MODES, "padding_mode")
        self.max_batch = check_int(max_batch, "max_batch")
        self.generator = generator
        self.seed = check_seed(seed)

    def transforms(self, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
        """(angles (T,) degrees, translations (T, 2) pixels), identity first."""
        if self.random_samples is not None:
            like = torch.empty(0, dtype=dtype, device=device)
            gen = resolve_generator(self.generator, self.seed, like.device)
            draw = 2 * uniform((self.random_samples, 3), like, gen) - 1
            angles = draw[:, 0] * self.max_rotation
            shifts = draw[:, 1:] * self.max_translation
        else:
            rot = torch.linspace(-self.max_rotation, self.max_rotation, self.num_rotations, dtype=torch.float64)
            shift = torch.linspace(-self.max_translation, self.max_translation, self.num_translations,
                                   dtype=torch.float64)
            if self.num_rotations == 1:
                rot = rot.new_zeros(1)
            if self.num_translations == 1:
                shift = shift.new_zeros(1)
            grid = torch.tensor(list(itertools.product(rot.tolist(), shift.tolist(), shift.tolist())),
                                dtype=torch.float64)
            grid = grid[~(grid == 0).all(dim=1)]
            angles, shifts = grid[:, 0].to(dtype).to(device), grid[:, 1:].to(dtype).to(device)
        zero = torch.zeros(1, dtype=dtype, device=device)
        return torch.cat((zero, angles)), torch.cat((zero.new_zeros(1, 2), shifts))

    def _attack(self, images, labels):
        n, _, height, width = images.shape
        angles, shifts = self.transforms(images.device, images.dtype)
        flows = rigid_flow(angles, shifts, height, width)  # (T, 2, H, W)
        count = flows.shape[0]
        pick = self._best_of_flows(images, labels, flows, clamp=False)
        flow = flows[pick]
        with torch.no_grad():
            adv = warp(images, flow, self.padding_mode, backend=self.backend)
        iterations = torch.full((n,), count, device=images.device)
        return flow, adv, iterations, {"angle": angles[pick], "translation": shifts[pick]}
