"""What every kernel module shares: the @triton.jit helpers every kernel calls (this program's
pixels, loads in the accumulation precision), interpreter detection, block sizes, dtype names, the
device guard, cached launch configurations, cached compiled-kernel handles, and one launch function
that compile checks can observe.

Naming, in every kernel module: kernels are ``_<what>_kernel``; @triton.jit helpers are named for
what they return, ``load_*`` / ``_load_*`` for those that read memory (upcast to the accumulation
precision); a helper returning more than a few values returns a NamedTuple (:class:`PixelBlock`);
on the host, ``_VARIANTS`` maps a launch variant to its kernel and constexpr flags and ``_config``
builds its cached :class:`LaunchConfig`; the launchers are public.

No GPU query at import time; nothing here knows about autograd.

Launch path (host cost matters: a warp forward is one launch): a launcher looks its
:class:`LaunchConfig` up by (shape, dtype, mode, variant) -- grid, block, integer arguments and
constexprs computed once -- and calls :func:`launch_config`, which

1. records the launch instead, under :func:`recording_launches` (compile checks);
2. makes the tensors' CUDA device current only when it is not already;
3. launches through a cached compiled-kernel handle when one matches (see :class:`KernelHandle`),
   else through Triton's JIT (``kernel[grid](...)``), and caches the handle that launch returns.
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from typing import NamedTuple

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
_recording = 0  # how many recorders are active, in any thread (a launch looks at _state only then)
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


class PixelBlock(NamedTuple):
    """This program's pixels, as :func:`pixel_block` returns them (a NamedTuple: Triton passes it
    between @triton.jit functions, compiled and interpreted alike)."""

    n: tl.tensor      # the image, int64
    block: tl.tensor  # the pixel block within the image
    offs: tl.tensor   # flat pixel offsets (BLOCK of them)
    mask: tl.tensor   # offsets inside the image
    row: tl.tensor
    col: tl.tensor


@triton.jit
def pixel_block(H, W, BLOCK: tl.constexpr):
    """:class:`PixelBlock` of this program on the 1-D grid of :func:`program_pixels`."""
    n64, block, offs = program_pixels(H * W, BLOCK)
    return PixelBlock(n64, block, offs, offs < H * W, offs // W, offs % W)


@triton.jit
def load_acc(ptr, offs, mask, IS_FP64: tl.constexpr):
    """``ptr[offs]`` (0 where masked) in the accumulation precision: float64 for float64 kernels,
    float32 otherwise (see :func:`compute_dtype`)."""
    value = tl.load(ptr + offs, mask=mask, other=0.0)
    if IS_FP64:
        value = value.to(tl.float64)
    else:
        value = value.to(tl.float32)
    return value


@triton.jit
def load_field(ptr, n64, offs, hw, mask, IS_FP64: tl.constexpr):
    """Both channels (x, y) of image ``n64`` of an (N, 2, H, W) field at the pixels ``offs``, in the
    accumulation precision."""
    base = ptr + n64 * 2 * hw
    return load_acc(base, offs, mask, IS_FP64), load_acc(base + hw, offs, mask, IS_FP64)


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


_cuda_get_device = getattr(torch._C, "_cuda_getDevice", None)


def _current_cuda_device() -> int:
    """Index of the current CUDA device (tests replace this on machines without one). Called with
    a CUDA tensor at hand, so CUDA is initialized: the C getter is enough."""
    if _cuda_get_device is not None:
        return _cuda_get_device()
    return torch.cuda.current_device()  # pragma: no cover - a torch without the private getter


def device_guard(tensor: torch.Tensor):
    """Context that makes ``tensor``'s CUDA device current (Triton launches on the current device);
    a null context when it already is, or when the tensor is not on a CUDA device."""
    if tensor.is_cuda and tensor.get_device() != _current_cuda_device():
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
    global _recording
    previous = getattr(_state, "recorder", None)
    _state.recorder = records = []
    _recording += 1
    try:
        yield records
    finally:
        _state.recorder = previous
        _recording -= 1


def launch(kernel, grid, device_of: torch.Tensor, *args, num_warps: int = GPU_NUM_WARPS, **constexprs) -> None:
    """``kernel[grid](*args, **constexprs)`` on ``device_of``'s device (or recorded, see
    :func:`recording_launches`). The general form; the launchers use :func:`launch_config`."""
    recorder = getattr(_state, "recorder", None)
    if recorder is not None:
        recorder.append((kernel, args, constexprs, num_warps))
        return
    with device_guard(device_of):
        kernel[grid](*args, num_warps=num_warps, **constexprs)


# ----------------------------------------------------------------------------------------------
# Cached launch configurations and compiled-kernel handles
# ----------------------------------------------------------------------------------------------

#: Cached configurations per launcher; cleared whole when it passes this many entries (a run
#: with ever-new shapes must not grow memory without bound).
MAX_CONFIGS = 4096
_configs: dict = {}


class LaunchConfig:
    """What a launcher computes once per (shape, dtype, mode, variant): the kernel, its grid, the
    integer arguments, the constexprs and warps; plus the compiled-kernel handles launched with
    it (per device and pointer dtype/alignment).

    ``scalars`` is the kernel's non-pointer runtime arguments when they are all fixed by the
    configuration (then a launch passes only the pointers), else None.
    """

    __slots__ = ("kernel", "grid", "ints", "scalars", "constexprs", "num_warps", "cvals", "tail", "handles", "extra")

    def __init__(self, kernel, grid, ints: tuple, constexprs: dict, num_warps: int = GPU_NUM_WARPS,
                 scalars: tuple | None = None, extra=None):
        self.kernel, self.grid, self.ints, self.scalars = kernel, tuple(grid), tuple(ints), scalars
        self.constexprs, self.num_warps, self.extra = dict(constexprs), num_warps, extra
        # constexpr values in the kernel's parameter order: Triton hands every bound argument,
        # constexprs included, to the compiled kernel's launcher.
        names = getattr(kernel, "arg_names", None)
        self.cvals = tuple(self.constexprs[n] for n in names if n in self.constexprs) if names else ()
        self.tail = None if scalars is None else scalars + self.cvals  # what follows the pointers
        self.handles = {}


def cached_config(key, make):
    """The :class:`LaunchConfig` for ``key`` (which must include everything ``make`` reads, the
    forced block size included), built by ``make()`` on first use."""
    cfg = _configs.get(key)
    if cfg is None:
        if len(_configs) >= MAX_CONFIGS:
            _configs.clear()
        cfg = _configs[key] = make()
    return cfg


def forced_block():
    """The block size forced by :func:`forced_block_size` (None when not forced): part of every
    configuration key."""
    return _forced_block


def _handles_supported() -> bool:
    """Cached handles replicate what ``JITFunction.run`` does after its cache lookup; that code is
    the same in triton 3.6 to 3.8 (checked), so other versions launch through the JIT."""
    try:
        major, minor = (int(x) for x in triton.__version__.split(".")[:2])
    except ValueError:  # pragma: no cover - unusual version strings
        return False
    return (3, 6) <= (major, minor) <= (3, 8)


#: Launch through cached compiled-kernel handles (off in the interpreter, where launches return no
#: compiled kernel; FLOWTRITON_KERNEL_HANDLES=0 turns them off). Tests may flip it at run time.
USE_HANDLES = (not interpreted() and _handles_supported()
               and os.environ.get("FLOWTRITON_KERNEL_HANDLES", "1").strip().lower() not in ("0", "false", "no", ""))

_knobs = None
_driver = None
_CompiledKernel = None
if USE_HANDLES:
    try:
        from triton import knobs as _knobs
        from triton.compiler.compiler import CompiledKernel as _CompiledKernel
        from triton.runtime.driver import driver as _driver
    except ImportError:  # pragma: no cover - a triton without these names
        USE_HANDLES = False


class KernelHandle:
    """A compiled kernel that one JIT launch returned, launched directly the next time the same
    configuration meets pointers of the same dtypes and 16-byte alignment on the same device,
    with Triton's debug, instrumentation and stage-inspection settings unchanged: exactly the
    inputs of Triton's own cache key (integer arguments are pinned by the :class:`LaunchConfig`,
    floats are not specialized), so the JIT would pick this same kernel. The launch itself is what
    ``JITFunction.run`` does after its cache lookup: the compiled kernel's launcher with the
    current stream, ``launch_metadata`` and Triton's launch hooks (the metadata is only built when
    a launch-enter hook is installed: nothing else reads it). Not cached, and not used, while the
    kernel has pre-run hooks. Skipped from ``run``: its check that the kernel's global values
    have not changed (these kernels read none that change)."""

    __slots__ = ("compiled", "run", "function", "packed_metadata", "grid", "g0", "g1", "g2")

    def __init__(self, compiled, cfg: LaunchConfig):
        self.compiled = compiled
        self.run, self.function, self.packed_metadata = compiled.run, compiled.function, compiled.packed_metadata
        grid = self.grid = cfg.grid
        self.g0, self.g1, self.g2 = grid[0], grid[1] if len(grid) > 1 else 1, grid[2] if len(grid) > 2 else 1

    def __call__(self, device: int, args: tuple) -> None:
        """Launch with every bound argument: pointers, scalars, then the constexpr values."""
        stream = _driver.active.get_current_stream(device)
        runtime = _knobs.runtime
        enter = runtime.launch_enter_hook
        metadata = (self.compiled.launch_metadata(self.grid, stream, *args)
                    if enter is not None and getattr(enter, "calls", True) else None)
        self.run(self.g0, self.g1, self.g2, stream, self.function, self.packed_metadata, metadata,
                 enter, runtime.launch_exit_hook, *args)


def _dtype(tensor):
    return tensor.dtype


def launch_config(cfg: LaunchConfig, device_of: torch.Tensor, pointers: tuple, scalars: tuple | None = None,
                  guard: tuple | None = None) -> None:
    """Launch ``cfg.kernel`` with ``pointers`` (its tensor arguments, in order, first in its
    signature), then ``scalars`` (its other runtime arguments; default ``cfg.scalars``), then
    ``cfg``'s constexprs, on ``device_of``'s device; or record the launch (see
    :func:`recording_launches`). ``guard``: the distinct tensors among ``pointers`` (every pointer
    must be one of them; default all), whose dtypes and alignments select a cached handle."""
    if _recording:
        recorder = getattr(_state, "recorder", None)
        if recorder is not None:
            recorder.append((cfg.kernel, pointers + (cfg.scalars if scalars is None else scalars), cfg.constexprs,
                             cfg.num_warps))
            return
    if device_of.is_cuda:
        device = device_of.get_device()
        if device != _current_cuda_device():
            with torch.cuda.device(device):
                _launch(cfg, device, pointers, scalars, guard)
            return
    else:
        device = -1
    if USE_HANDLES:  # the common path, inline: a handle for these dtypes and alignments
        if guard is None:
            guard = pointers
        runtime = _knobs.runtime
        key = (device, runtime.debug, _knobs.compilation.instrumentation_mode, runtime.add_stages_inspection_hook,
               *map(_dtype, guard), *[p.data_ptr() & 15 for p in guard])
        handle = cfg.handles.get(key)
        if handle is not None and not cfg.kernel.pre_run_hooks:  # KernelHandle.__call__, inline
            args = pointers + (cfg.tail if scalars is None else scalars + cfg.cvals)
            stream = _driver.active.get_current_stream(device)
            enter = runtime.launch_enter_hook
            handle.run(handle.g0, handle.g1, handle.g2, stream, handle.function, handle.packed_metadata,
                       handle.compiled.launch_metadata(handle.grid, stream, *args)
                       if enter is not None and getattr(enter, "calls", True) else None,
                       enter, runtime.launch_exit_hook, *args)
            return
    _launch(cfg, device, pointers, scalars, guard)


def _launch(cfg: LaunchConfig, device: int, pointers: tuple, scalars: tuple | None, guard: tuple | None) -> None:
    """Through a cached handle if one matches, else through the JIT (caching the handle)."""
    if scalars is None:
        scalars = cfg.scalars
    if USE_HANDLES:
        runtime = _knobs.runtime
        if guard is None:
            guard = pointers
        key = (device, runtime.debug, _knobs.compilation.instrumentation_mode, runtime.add_stages_inspection_hook,
               *map(_dtype, guard), *[p.data_ptr() & 15 for p in guard])
        handle = cfg.handles.get(key)
        if handle is not None and not cfg.kernel.pre_run_hooks:
            handle(device, pointers + scalars + cfg.cvals)
            return
    kernel = cfg.kernel
    compiled = kernel[cfg.grid](*pointers, *scalars, num_warps=cfg.num_warps, **cfg.constexprs)
    if (USE_HANDLES and isinstance(compiled, _CompiledKernel) and not kernel.pre_run_hooks
            and runtime.add_stages_inspection_hook is None):
        cfg.handles[key] = KernelHandle(compiled, cfg)
