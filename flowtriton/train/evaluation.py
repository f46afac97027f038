"""Moved to :mod:`flowtriton.app.evaluation` (the application lives apart from the library); this name
keeps working for one release with a DeprecationWarning."""

import importlib
import warnings

warnings.warn("flowtriton.train.evaluation moved to flowtriton.app.evaluation; the old name goes in the next release",
              DeprecationWarning, stacklevel=2)
_moved = importlib.import_module("flowtriton.app.evaluation")
globals().update({k: v for k, v in vars(_moved).items() if not k.startswith("__")})
