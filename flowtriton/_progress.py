"""Progress bars when tqdm is installed (``pip install flowtriton[app]``), silence otherwise.

The library needs only torch, triton, numpy and einops; tqdm (bars), matplotlib (plots) and Pillow
(image folders) are the application extra. A bar asked for without tqdm warns once and shows
nothing; the work is the same.
"""

from __future__ import annotations

import warnings

_warned = False


class _NoBar:
    """What a disabled bar does: nothing."""

    def __init__(self, *args, **kwargs):
        pass

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    @staticmethod
    def write(message: str) -> None:
        print(message, flush=True)


def _tqdm():
    """tqdm's class, or None (with one warning) when it is not installed."""
    global _warned
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if not _warned:
            _warned = True
            warnings.warn("progress bars need tqdm: pip install 'flowtriton[app]' (running without them)",
                          RuntimeWarning, stacklevel=3)
        return None
    return tqdm


def progress_bar(enabled: bool = True, **kwargs):
    """``tqdm(**kwargs)`` when ``enabled`` and tqdm is installed, else an object with the same
    ``update`` / ``set_postfix`` / ``close`` that does nothing."""
    if not enabled:
        return _NoBar()
    tqdm = _tqdm()
    return _NoBar() if tqdm is None else tqdm(**kwargs)


def write(message: str) -> None:
    """Print a line without breaking a bar that is being shown (``tqdm.write``), or plainly."""
    tqdm = _tqdm()
    (tqdm.write if tqdm is not None else _NoBar.write)(message)
