"""Input checks of the functional layer: every error names the argument and what was seen."""

from __future__ import annotations

import torch

from ..checks import check_choice  # the one definition; ops and attacks import it from here

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_image(image, name: str = "image") -> None:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(image).__name__}")
    if image.dim() != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), got {tuple(image.shape)} ({image.dim()} dims)")
    if image.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor (float16/bfloat16/float32/float64), got {image.dtype}")
    if image.shape[1] == 0 or image.shape[2] == 0 or image.shape[3] == 0:
        raise ValueError(f"{name} must have C, H, W >= 1, got {tuple(image.shape)}")


def check_flow(flow, image: torch.Tensor, name: str = "flow", image_name: str = "image") -> None:
    if not isinstance(flow, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(flow).__name__}")
    if flow.dim() != 4:
        raise ValueError(f"{name} must have shape (N, 2, H, W), got {tuple(flow.shape)} ({flow.dim()} dims)")
    if flow.shape[1] != 2:
        raise ValueError(f"{name} must have 2 channels (x, y), got shape {tuple(flow.shape)}")
    n, _, h, w = image.shape
    if flow.shape[0] != n or flow.shape[2] != h or flow.shape[3] != w:
        raise ValueError(
            f"{name} shape {tuple(flow.shape)} does not match {image_name} shape {tuple(image.shape)}: "
            f"expected ({n}, 2, {h}, {w})"
        )
    check_same(flow, image, name, image_name)


_FLOAT_DTYPE_SET = frozenset(FLOAT_DTYPES)


def check_image_flow(image, flow, choice: str, choices: tuple, choice_name: str = "padding_mode",
                     image_name: str = "image", flow_name: str = "flow") -> None:
    """:func:`check_image` + :func:`check_flow` + :func:`check_choice` of ``choice`` (the padding
    mode, or a scheme), in one pass on the happy path (these checks run on every call of a public
    op: their cost is host time per launch); a failure is reported by the detailed checks."""
    try:
        n, c, h, w = image.shape
        fn, two, fh, fw = flow.shape
        # A dtype in the set means a torch dtype, so both are tensors; one CPU device or one
        # CUDA index means one device.
        ok = (two == 2 and fn == n and fh == h and fw == w and c > 0 and h > 0 and w > 0
              and image.dtype in _FLOAT_DTYPE_SET and flow.dtype == image.dtype
              and choice.__class__ is str and choice in choices
              and (flow.get_device() == image.get_device() if image.is_cuda
                   else (image.is_cpu and flow.is_cpu) or flow.device == image.device))
    except (AttributeError, TypeError, ValueError):
        ok = False
    if not ok:
        check_image(image, image_name)
        check_flow(flow, image, flow_name, image_name)
        check_choice(choice, choices, choice_name)


def check_image_pair(image, other, other_name: str = "grad_image") -> None:
    """:func:`check_image` for both + equal shapes, dtypes and devices, one pass on the happy path."""
    try:
        n, c, h, w = image.shape
        ok = (c > 0 and h > 0 and w > 0 and other.shape == image.shape and image.dtype in _FLOAT_DTYPE_SET
              and other.dtype == image.dtype
              and (other.get_device() == image.get_device() if image.is_cuda
                   else (image.is_cpu and other.is_cpu) or other.device == image.device))
    except (AttributeError, TypeError, ValueError):
        ok = False
    if not ok:
        check_image(image)
        check_image(other, other_name)
        if other.shape != image.shape:
            raise ValueError(f"{other_name} shape {tuple(other.shape)} must equal image shape {tuple(image.shape)}")
        check_same(other, image, other_name, "image")


def check_same(tensor: torch.Tensor, other: torch.Tensor, name: str, other_name: str) -> None:
    if tensor.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be a floating tensor, got {tensor.dtype}")
    if tensor.dtype != other.dtype:
        raise TypeError(f"{name} dtype {tensor.dtype} differs from {other_name} dtype {other.dtype}")
    if tensor.device != other.device:
        raise ValueError(f"{name} is on {tensor.device} but {other_name} is on {other.device}")


IMAGE_RANGE_TOLERANCE = 1e-4


def check_unit_range(images: torch.Tensor, name: str = "images", tol: float = IMAGE_RANGE_TOLERANCE) -> None:
    """ValueError unless every value of ``images`` lies in [0 - tol, 1 + tol] (the library's image
    convention; normalization belongs inside the model). One host sync: call once per run, not
    per iteration."""
    if images.numel() == 0:
        return
    lo, hi = torch.aminmax(images.detach())
    lo, hi = float(lo), float(hi)
    if not (lo >= -tol and hi <= 1.0 + tol):
        raise ValueError(
            f"{name} must hold values in [0, 1] (normalize inside the model), got min {lo:.4g}, max {hi:.4g}"
        )


def contiguous(t: torch.Tensor | None) -> torch.Tensor | None:
    """``t`` in contiguous memory (the launchers read flat planes); None stays None."""
    return t if t is None or t.is_contiguous() else t.contiguous()
