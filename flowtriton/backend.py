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


def _check(name, source: str) -> str:
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"{source} must be one of {BACKENDS}, got {name!r}")
    return name


def check_backend(name: str | None, argument: str = "backend") -> str | None:
    """``name`` if it is a backend name or ``None`` (meaning: the setting in force at call time),
    else a ValueError naming ``argument`` and the allowed values.

    For constructors (attacks, regularizers) that store a backend for later calls: a typo fails
    where it was written, not at the first forward pass.
    """
    return None if name is None else _check(name, argument)


def set_backend(name: str | None) -> None:
    """Set the process-wide default backend (``None`` clears it).

    It applies where no ``backend=`` argument and no :func:`use_backend` context says otherwise.

    Args:
        name: 'auto', 'triton', 'torch', or ``None`` to clear the setting; another value raises
            a ValueError.

    Returns:
        None.

    Example:
        >>> import flowtriton
        >>> flowtriton.set_backend("torch")
        >>> flowtriton.requested_backend()
        'torch'
        >>> flowtriton.set_backend(None)  # back to FLOWTRITON_BACKEND or 'auto'
    """
    global _global_backend
    _global_backend = None if name is None else _check(name, "backend")


@contextlib.contextmanager
def use_backend(name: str):
    """Context manager: use ``name`` for flowtriton ops in this thread.

    It takes precedence over :func:`set_backend` and ``FLOWTRITON_BACKEND``, not over a
    ``backend=`` argument; the previous setting is restored on exit.

    Args:
        name: 'auto', 'triton' or 'torch'; another value raises a ValueError.

    Yields:
        None, with ``name`` in force inside the ``with`` block.

    Example:
        >>> import flowtriton
        >>> with flowtriton.use_backend("torch"):
        ...     print(flowtriton.requested_backend())
        ...     out = flowtriton.warp(torch.rand(1, 3, 4, 4), torch.zeros(1, 2, 4, 4))  # the reference
        torch
        >>> out.shape
        torch.Size([1, 3, 4, 4])
    """
    _check(name, "backend")
    previous = getattr(_state, "backend", None)
    _state.backend = name
    try:
        yield
    finally:
        _state.backend = previous


def requested_backend(argument: str | None = None) -> str:
    """The backend name in force: argument > context > global > FLOWTRITON_BACKEND > 'auto'.

    Args:
        argument: a function's ``backend=`` argument; ``None`` defers to :func:`use_backend`,
            then :func:`set_backend`, then the ``FLOWTRITON_BACKEND`` environment variable.

    Returns:
        'auto', 'triton' or 'torch'. An invalid argument or environment value raises a
        ValueError naming it.

    Example:
        >>> from flowtriton import requested_backend, use_backend
        >>> requested_backend("torch")
        'torch'
        >>> with use_backend("triton"):
        ...     requested_backend(), requested_backend("torch")  # the argument wins
        ('triton', 'torch')
    """
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


_triton_importable: bool | None = None


def triton_available() -> bool:
    """Whether triton imports (decided once per process)."""
    global _triton_importable
    if _triton_importable is None:
        try:
            import triton  # noqa: F401
        except Exception:  # pragma: no cover - depends on the platform
            _triton_importable = False
        else:
            _triton_importable = True
    return _triton_importable


def resolve_backend(argument: str | None, tensor: torch.Tensor) -> str:
    """'triton' or 'torch' for an op on ``tensor``; raises if 'triton' cannot run there."""
    name = requested_backend(argument)
    if name == "torch":
        return "torch"
    if tensor.is_cuda:
        if triton_available():
            return "triton"
        usable = False
    else:
        if name == "auto":
            return "torch"
        usable = triton_available() and triton_interpreted()
    if name == "auto":
        return "torch"
    if not usable:
        where = "a CUDA tensor" if not tensor.is_cuda else "an importable triton"
        raise RuntimeError(
            f"backend='triton' needs {where} (or TRITON_INTERPRET=1 set before importing "
            f"flowtriton, to interpret the kernels on CPU); got a tensor on {tensor.device}"
        )
    return "triton"


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)
_functorch_active = getattr(torch._C, "_are_functorch_transforms_active", None)
_dispatch_modes = getattr(torch._C, "_len_torch_dispatch_stack", None)


def traced(*tensors: torch.Tensor) -> bool:
    """Whether a Triton op call must go through its ``torch.library`` custom op rather than the
    lean eager path (an ``autograd.Function`` or the launcher): while torch.compile / export
    traces (``torch.compiler.is_compiling()``), under a torch.func transform or a
    ``TorchDispatchMode`` (fake tensors, FlopCounter, ...), or for tensor subclasses (FakeTensor,
    DTensor, ...): there the op must be seen as one op, with its fake implementation."""
    if torch.compiler.is_compiling():
        return True
    if _functorch_active is not None and _functorch_active():
        return True
    if _dispatch_modes is not None and _dispatch_modes():
        return True
    for t in tensors:
        if type(t) not in _PLAIN_TENSORS:
            return True
    return False


_raw_apply = torch._C._FunctionBase.__dict__.get("apply")
_unwrap_if_dead = getattr(getattr(torch._C, "_functorch", None), "unwrap_if_dead", None)


def eager_apply(function: type[torch.autograd.Function]):
    """``function.apply`` for two leading tensor arguments, without ``Function.apply``'s Python
    wrapper (1-2 us per call), for use only where :func:`traced` is False. That wrapper binds
    default arguments when ``setup_context`` is defined (not for these Functions), hands over to
    functorch when a transform is active (excluded by :func:`traced`), and otherwise unwraps dead
    functorch wrappers before the C++ ``apply``: this does that last step itself. Falls back to
    ``function.apply`` on a torch without these internals."""
    from torch.autograd.function import _is_setup_context_defined

    if _raw_apply is None or _unwrap_if_dead is None or _is_setup_context_defined(function.setup_context):
        return function.apply
    raw = _raw_apply.__get__(None, function)
    unwrap = _unwrap_if_dead

    def apply(first, second, *rest):
        return raw(unwrap(first), unwrap(second), *rest)

    apply.__doc__ = f"{function.__name__}.apply (see flowtriton.backend.eager_apply)"
    return apply
