"""Where data lives and where decoded caches go.

Data root: the ``data_dir`` argument (``--data-dir``), else ``$FLOWTRITON_DATA``, else the cache
folder. Cache folder: ``$FLOWTRITON_CACHE``, else ``~/.cache/flowtriton``. Decoded caches are
always written under the cache folder, never beside the data (a data root may be read-only).
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """The user's cache folder (not created here)."""
    env = os.environ.get("FLOWTRITON_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "flowtriton"


def data_root(data_dir: str | os.PathLike | None = None) -> Path:
    """The folder datasets are looked up (and downloaded) in."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    env = os.environ.get("FLOWTRITON_DATA")
    return Path(env).expanduser() if env else cache_dir()
