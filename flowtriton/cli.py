"""The command line lives in :mod:`flowtriton.app.cli`; this name stays for scripts installed before
the move (``flowtriton = "flowtriton.cli:main"``)."""

from .app.cli import main

__all__ = ["main"]
