"""Moved to :mod:`flowtriton.app.plots` (the application lives apart from the library); this name
keeps working for one release with a DeprecationWarning."""

import importlib
import warnings

warnings.warn("flowtriton.plots moved to flowtriton.app.plots; the old name goes in the next release",
              DeprecationWarning, stacklevel=2)
_moved = importlib.import_module("flowtriton.app.plots")
globals().update({k: v for k, v in vars(_moved).items() if not k.startswith("__")})
