"""Moved to :mod:`flowtriton.app.demo` (the application lives apart from the library); this name
keeps working for one release with a DeprecationWarning."""

import importlib
import warnings

warnings.warn("flowtriton.train.demo moved to flowtriton.app.demo; the old name goes in the next release",
              DeprecationWarning, stacklevel=2)
_moved = importlib.import_module("flowtriton.app.demo")
globals().update({k: v for k, v in vars(_moved).items() if not k.startswith("__")})
