"""Backend selection: 'auto' (Triton on CUDA tensors, reference otherwise), 'triton', 'torch'.

Precedence: the function's ``backend=`` argument, then :func:`use_backend` / :func:`set_backend`,
then the ``FLOWTRITON_BACKEND`` environment variable, then ``'auto'``. With ``TRITON_INTERPRET=1``
set before flowtriton is imported, ``'triton'`` runs the kernels on CPU tensors (slowly): that is
how the kernels are tested without a GPU.
"""

from __future__ import annotations

import contextlib
import os
import threading

import torch

BACKENDS = ("auto", "triton", "torch")

_state = threading.local()
_global_backend: str | None = None


def _check(name: str, source: str) -> str:
    if name not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS}, got {name!r}")
    return name


def set_backend(name: str | None) -> None:
    """Set the process-wide default backend (``None`` clears it)."""
    global _global_backend
    _global_backend = None if name is None else _check(name, "backend")


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager: use ``name`` for flowtriton ops in this thread."""
    _check(name, "backend")
    previous = getattr(_state, "backend", None)
    _state.backend = name
    try:
        yield
    finally:
        _state.backend = previous


def requested_backend(argument: str | None = None) -> str:
    """The backend name in force: argument > context > global > FLOWTRITON_BACKEND > 'auto'."""
    if argument is not None:
        return _check(argument, "backend")
    local = getattr(_state, "backend", None)
    if local is not None:
        return local
    if _global_backend is not None:
        return _global_backend
    env = os.environ.get("FLOWTRITON_BACKEND")
    if env:
        return _check(env.strip().lower(), "FLOWTRITON_BACKEND")
    return "auto"


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except Exception:  # pragma: no cover - depends on the platform
        return False
    return True


def resolve_backend(argument: str | None, tensor: torch.Tensor) -> str:
    """'triton' or 'torch' for an op on ``tensor``; raises if 'triton' cannot run there."""
    name = requested_backend(argument)
    if name == "torch":
        return "torch"
    usable = triton_available() and (tensor.is_cuda or triton_interpreted())
    if name == "auto":
        return "triton" if (usable and tensor.is_cuda) else "torch"
    if not usable:
        where = "a CUDA tensor" if not tensor.is_cuda else "an importable triton"
        raise RuntimeError(
            f"backend='triton' needs {where} (or TRITON_INTERPRET=1 set before importing "
            f"flowtriton, to interpret the kernels on CPU); got a tensor on {tensor.device}"
        )
    return "triton"
