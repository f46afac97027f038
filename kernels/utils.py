"""What every kernel module shares: interpreter detection, block sizes, dtype names, the device
guard, and one launch function that compile checks can observe.

No GPU query at import time; nothing here knows about autograd.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings

import torch
import triton
import triton.language as tl

GPU_BLOCK = 256            # pixels per program on a GPU (warp and penalty kernels)
GPU_NUM_WARPS = 4
PENALTY_MAX_BLOCK = 1024   # the penalty reduction covers up to this many pixels in one program
INTERPRETER_MAX_BLOCK = 4096
MIN_BLOCK = 16

#: torch dtype -> Triton type name, for every dtype the kernels accept.
TRITON_DTYPES = {torch.float32: "fp32", torch.float64: "fp64", torch.float16: "fp16", torch.bfloat16: "bf16"}

_state = threading.local()  # the launch recorder: per thread
# The forced block size is process-wide: on CUDA, autograd runs backward in a thread of its own,
# which must see the size the test forced around forward and backward alike.
_forced_block = None


@triton.jit
def program_pixels(hw, BLOCK: tl.constexpr):
    """This program's image (int64) and flat pixel offsets on the 1-D grid over (image, pixel
    block) every kernel uses (no 65535 limit: grid axes 1 and 2 stay unused), and the block index."""
    blocks = tl.cdiv(hw, BLOCK)
    pid = tl.program_id(0)
    block = pid % blocks
    n64 = (pid // blocks).to(tl.int64)
    offs = block * BLOCK + tl.arange(0, BLOCK)
    return n64, block, offs


def grid_1d(n: int, hw: int, block: int) -> tuple[int]:
    """Launch grid for :func:`program_pixels`: one program per (image, block of pixels)."""
    return (n * triton.cdiv(hw, block),)


def interpreted() -> bool:
    """True when TRITON_INTERPRET is set: kernels run on CPU tensors in Triton's interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype of the kernels: float64 for float64 tensors, float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@contextlib.contextmanager
def forced_block_size(block):
    """Make every launcher, in every thread (CUDA runs backward in autograd's own), use ``block``
    pixels per program (a power of two >= 16), or, with ``block='gpu'``, the block sizes a GPU
    uses, also in the interpreter.

    For tests: the interpreter otherwise covers a small image with one program, so the multi-block
    paths a GPU runs (masks on a ragged last block, per-block partial sums, stencil reads across
    block boundaries) would never execute on CPU.
    """
    if block != "gpu" and (isinstance(block, bool) or not isinstance(block, int)
                           or block < MIN_BLOCK or block & (block - 1)):
        raise ValueError(f"block must be 'gpu' or a power of two >= {MIN_BLOCK}, got {block!r}")
    global _forced_block
    previous, _forced_block = _forced_block, block
    try:
        yield
    finally:
        _forced_block = previous


def block_size(hw: int, gpu_block: int = GPU_BLOCK) -> int:
    """Pixels per program for an image of ``hw`` pixels: the forced size if any; on a GPU
    ``gpu_block``; in the interpreter one block up to 4096 pixels (few, wide programs are what make
    it fast)."""
    forced = _forced_block
    if forced == "gpu":
        return gpu_block
    if forced is not None:
        return forced
    if interpreted():
        return max(MIN_BLOCK, min(triton.next_power_of_2(hw), INTERPRETER_MAX_BLOCK))
    return gpu_block


def penalty_block_size(hw: int) -> int:
    """Pixels per program of the penalty reduction: the whole image when it has at most 1024
    pixels (MNIST, CIFAR), so the per-example sum needs no second stage."""
    return block_size(hw, max(GPU_BLOCK, min(triton.next_power_of_2(hw), PENALTY_MAX_BLOCK)))


def device_guard(tensor: torch.Tensor):
    """Context that makes ``tensor``'s CUDA device current (Triton launches on the current device)."""
    if tensor.is_cuda:
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


def alert_nondeterministic(what: str) -> None:
    """Raise (or warn, with ``warn_only=True``) under ``torch.use_deterministic_algorithms(True)``,
    as ATen's atomic-based backward kernels do."""
    if not torch.are_deterministic_algorithms_enabled():
        return
    message = (f"{what} does not have a deterministic implementation, but you set "
               "'torch.use_deterministic_algorithms(True)'. Use the reference backend (backend='torch'), "
               "or torch.use_deterministic_algorithms(True, warn_only=True) to allow it with a warning.")
    if torch.is_deterministic_algorithms_warn_only_enabled():
        warnings.warn(message, UserWarning, stacklevel=3)
    else:
        raise RuntimeError(message)


@contextlib.contextmanager
def recording_launches():
    """Record launches instead of running them (in this thread): yields a list that fills with
    ``(kernel, args, constexprs, num_warps)``. Compile checks use it to build exactly what the
    launchers would launch, on a machine without a GPU."""
    previous = getattr(_state, "recorder", None)
    _state.recorder = records = []
    try:
        yield records
    finally:
        _state.recorder = previous


def launch(kernel, grid, device_of: torch.Tensor, *args, num_warps: int = GPU_NUM_WARPS, **constexprs) -> None:
    """``kernel[grid](*args, **constexprs)`` on ``device_of``'s device (or recorded, see
    :func:`recording_launches`)."""
    recorder = getattr(_state, "recorder", None)
    if recorder is not None:
        recorder.append((kernel, args, constexprs, num_warps))
        return
    with device_guard(device_of):
        kernel[grid](*args, num_warps=num_warps, **constexprs)
