"""Rotation + translation search (Engstrom et al. 2019; foolbox 3's SpatialAttack), as flows."""

from __future__ import annotations

import itertools
import math

import torch

from ..ops.units import unit_factors
from ..ops.warp import warp
from ..ops.validation import check_choice
from .base import (PADDING_MODES, FlowAttack, check_generator, check_int, check_number, check_seed, check_units,
                   resolve_generator, uniform)


def rigid_flow(angles_deg: torch.Tensor, translations: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pixel flows of rotations about the image centre followed by translations.

    A point q of the image moves to ``R (q - c) + c + t``, so the output pixel p reads the image
    at ``c + R^-1 (p - c - t)`` (c the centre, ((W - 1) / 2, (H - 1) / 2)).

    Args:
        angles_deg: (T,) angles, degrees, counter-clockwise as displayed (rows grow downwards); 90
            equals ``torch.rot90(image, 1, dims=(-2, -1))`` on square images.
        translations: (T, 2) (x, y) shifts in pixels (+x right, +y down); sets the dtype and device.
        height: image height H, pixels.
        width: image width W, pixels.

    Returns:
        (T, 2, H, W) flows in pixels, for :func:`flowtriton.warp`.

    Example:
        >>> from flowtriton import warp
        >>> from flowtriton.attacks import rigid_flow
        >>> flow = rigid_flow(torch.tensor([90.0]), torch.zeros(1, 2), 8, 8)
        >>> flow.shape
        torch.Size([1, 2, 8, 8])
        >>> image = torch.rand(1, 1, 8, 8)
        >>> torch.allclose(warp(image, flow, "zeros"), torch.rot90(image, 1, dims=(-2, -1)), atol=1e-5)
        True
        >>> rigid_flow(torch.zeros(1), torch.tensor([[2.0, 0.0]]), 8, 8)[0, :, 0, 0].tolist()  # reads 2 px left
        [-2.0, 0.0]
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

    The identity is always tried first. Calling the attack returns the (N, C, H, W) transformed
    images; ``run`` an :class:`~flowtriton.attacks.AttackResult` (flow in pixels, from
    :func:`rigid_flow`). ``result.iterations``: transforms tried (all of them). ``result.info``:
    'angle' (N,) degrees, 'translation' (N, 2) pixels (x, y) of the chosen one. No budget
    (``budget_kind`` None): :func:`flowtriton.attacks.evaluate` runs it once at its settings and
    :meth:`with_budget` is a ValueError.

    Args:
        model: classifier, (N, C, H, W) images in [0, 1] -> (N, classes) logits.
        max_rotation: degrees in [0, 180] (grid from -max to +max).
        max_translation: per axis, >= 0, in ``units``.
        num_rotations: grid points of the angle.
        num_translations: grid points of each shift (rotations x x-shifts x y-shifts in all).
        random_samples: if set, that many transforms drawn uniformly from the same ranges replace
            the grid (foolbox's ``grid_search=False``); uses ``generator`` / ``seed``, else torch's
            global generator.
        padding_mode: warp padding ('zeros': the area rotated in is black).
        targeted: ``labels`` are target classes (fallback: the transform with the lowest cross-entropy
            towards the target).
        max_batch: most warped images per model call (transforms are batched together).
        generator: the random draws of ``random_samples`` (a ``torch.Generator``).
        seed: an integer seed for those draws, used when ``generator`` is None.
        backend: flowtriton ops backend ('auto', 'triton', 'torch' or None).
        units: 'pixels' (default) or 'normalized' (1 unit = (size - 1) / 2 px along each axis, so
            ``max_translation=1`` shifts by up to half the image width along x and half its height
            along y).

    Example:
        >>> from flowtriton.attacks import RotationTranslation
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))
        >>> images, labels = torch.rand(2, 1, 8, 8), torch.tensor([0, 1])
        >>> attack = RotationTranslation(model, max_rotation=30.0, max_translation=2.0, num_rotations=3,
        ...                              num_translations=3)
        >>> angles, shifts = attack.transforms()  # identity first: degrees, pixels
        >>> angles.shape, shifts.shape, angles[0].item()
        (torch.Size([27]), torch.Size([27, 2]), 0.0)
        >>> result = attack.run(images, labels)
        >>> result.iterations.tolist(), result.info["angle"].shape, result.info["translation"].shape
        ([27, 27], torch.Size([2]), torch.Size([2, 2]))
    """

    def __init__(self, model, max_rotation: float = 30.0, max_translation: float = 3.0,
                 num_rotations: int = 5, num_translations: int = 5, random_samples: int | None = None,
                 padding_mode: str = "zeros", targeted: bool = False, max_batch: int = 1024,
                 generator: torch.Generator | None = None, seed: int | None = None,
                 backend: str | None = None, units: str = "pixels"):
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
        self.generator = check_generator(generator, seed)
        self.seed = check_seed(seed)
        self.units = check_units(units, "RotationTranslation")

    def transforms(self, device=None, dtype=torch.float32, size=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(angles (T,) degrees, translations (T, 2) pixels), identity first. ``size``: the images'
        (height, width), needed with ``units='normalized'`` (a ValueError without it)."""
        if self.units == "pixels":
            sx = sy = None
        elif size is None:
            raise ValueError("RotationTranslation.transforms needs size=(height, width) with units='normalized' "
                             "(max_translation is a share of the image)")
        else:
            sx, sy = unit_factors(int(size[0]), int(size[1]), self.units)
        if self.random_samples is not None:
            like = torch.empty(0, dtype=dtype, device=device)
            gen = resolve_generator(self.generator, self.seed, like.device)
            draw = 2 * uniform((self.random_samples, 3), like, gen) - 1
            angles = draw[:, 0] * self.max_rotation
            shifts = draw[:, 1:] * self.max_translation
            if sx is not None:
                shifts = shifts * torch.tensor([sx, sy], dtype=shifts.dtype, device=shifts.device)
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
            if sx is not None:
                grid[:, 1] *= sx
                grid[:, 2] *= sy
            angles, shifts = grid[:, 0].to(dtype).to(device), grid[:, 1:].to(dtype).to(device)
        zero = torch.zeros(1, dtype=dtype, device=device)
        return torch.cat((zero, angles)), torch.cat((zero.new_zeros(1, 2), shifts))

    def _attack(self, images, labels):
        n, _, height, width = images.shape
        angles, shifts = self.transforms(images.device, images.dtype, (height, width))
        flows = rigid_flow(angles, shifts, height, width)  # (T, 2, H, W)
        count = flows.shape[0]
        pick = self._best_of_flows(images, labels, flows, clamp=False)
        flow = flows[pick]
        with torch.no_grad():
            adv = warp(images, flow, self.padding_mode, backend=self.backend)
        iterations = torch.full((n,), count, device=images.device)
        return flow, adv, iterations, {"angle": angles[pick], "translation": shifts[pick]}
