"""The former home of :mod:`flowtriton.io` (kept importable): the same functions."""

from .io import ensure_writable_dir, remove_stale_temporaries, save_atomic  # noqa: F401
