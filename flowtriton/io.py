"""File helpers of the application layer (data caches, checkpoints, evaluation caches), public
for scripts built on the library: atomic saves, leftovers of killed saves, writable folders."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch


def save_atomic(obj, path: str | Path) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then ``os.replace``: a reader (or a
    crash) never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def remove_stale_temporaries(folder: str | Path, names=("last.pt", "best.pt")) -> list[Path]:
    """Delete ``<name>.*.tmp`` files that :func:`save_atomic` left in ``folder`` when its process
    was killed mid-write (kill -9, power loss); returns what was removed."""
    folder = Path(folder)
    removed = []
    for name in names:
        for tmp in folder.glob(f"{name}.*.tmp"):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def ensure_writable_dir(path: str | Path, name: str = "out_dir") -> Path:
    """Create folder ``path`` if needed and prove it writable with a probe file; ValueError
    naming ``name`` otherwise (a file in the way, no permission, a read-only disk)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{name} {path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".write-test-")
        os.close(fd)
        os.remove(probe)
    except OSError as err:
        raise ValueError(f"{name} {path} is not a writable folder: {err.strerror or err}") from None
    return path
