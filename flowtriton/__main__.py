"""``python -m flowtriton ...`` (and ``torchrun ... -m flowtriton train ...``): the command line."""

from .app.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
