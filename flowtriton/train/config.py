"""Training configuration and presets.

Presets (``--preset``): 'paper' is the authors' CIFAR recipe (docs/method.md: SGD lr 0.01,
momentum 0.9, weight decay 5e-4, 80 epochs, MultiStepLR [40, 60] x0.1, batch 128, VGG-11,
Resize(36)-RandomCrop(32)-Flip); 'cpu' is a 10-epoch version for a CPU; 'smoke' runs a
couple of short epochs to check a set-up. Explicit settings override the preset.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from ..checks import check_choice, check_int, check_number
from ..data.datasets import check_val_size

METHODS = ("standard", "igr", "fgr", "fgr-fd", "at", "fgr+at")
REGULARIZED = ("igr", "fgr", "fgr-fd", "fgr+at")   # the methods that take a weight ``lam``
AMP_MODES = ("auto", "bf16", "off")
SEED_LIMIT = 2**63   # a run's seeds lie in [0, 2**63)


@dataclass
class TrainConfig:
    """Everything a run depends on. Units: ``sigma`` and ``at_eps`` in normalized flow units
    (1 unit = (size-1)/2 px); ``batch_size`` is the GLOBAL batch (split across DDP ranks)."""

    dataset: str = "mnist-subset"
    data_dir: str | None = None
    download: bool = False
    max_per_class: int | None = None          # image folders only: first files of each class
    val_size: float = 0.1                     # fraction (<1) or count of train examples held out
    split_seed: int = 0                       # seed of the validation split (fixed across runs)
    augment: str = "auto"                     # 'auto' -> 'paper' for 32x32 colour, else 'none'
    model: str = "small-cnn"
    method: str = "standard"
    lam: float | None = None                  # regularizer weight; None -> method default
    sigma: float = 0.01                       # FGR random-start std (normalized units)
    at_eps: float = 0.01                      # FlowPGD budget for 'at' (normalized units, L-inf)
    at_steps: int = 10
    epochs: int = 10
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    milestones: list = field(default_factory=lambda: [5, 8])
    gamma: float = 0.1
    seed: int = 0
    device: str = "auto"                      # 'auto' -> cuda when available
    amp: str = "auto"                         # 'auto' (bf16 on CUDA), 'bf16', 'off'
    out_dir: str = "runs/default"
    resume: bool = False                      # continue OUT_DIR/last.pt (start afresh if there is none)
    overwrite: bool = False                   # replace a run already in OUT_DIR (else refused)
    max_steps_per_epoch: int | None = None    # cap steps per epoch (quick runs, tests)
    progress: bool = True                     # a progress bar per epoch
    verbose: bool = True                      # print what is trained and a line per epoch
    log_every: int = 20                       # steps between log records (and loss checks)
    checkpoint_every: int | None = None       # also save last.pt every N steps within an epoch
    cuda_graph: bool = False                  # replay each training step from a CUDA graph (CUDA, one process)

    def __post_init__(self):
        try:
            self._check_settings()
        except TypeError as err:  # a config comes from files and flags: every refused setting is a ValueError
            raise ValueError(str(err)) from None
        self.val_size = check_val_size(self.val_size)
        if self.lam is not None:
            if self.method not in REGULARIZED:
                raise ValueError(f"method {self.method!r} has no regularizer, so lam={self.lam:g} would be ignored: "
                                 f"drop lam (--lam) or use one of {REGULARIZED}")
        if self.resume and self.overwrite:
            raise ValueError("resume and overwrite exclude each other: continue the run or replace it")

    def _check_settings(self) -> None:
        """The scalar settings, each by :mod:`flowtriton.checks` (TypeError or ValueError naming it);
        the values are kept as given (a saved config reads back equal)."""
        check_choice(self.method, METHODS, "method")
        for name in ("epochs", "batch_size", "at_steps", "log_every"):
            check_int(getattr(self, name), name)
        for name in ("max_steps_per_epoch", "max_per_class", "checkpoint_every"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), name)
        for name in ("seed", "split_seed"):
            check_int(getattr(self, name), name, minimum=0, maximum=SEED_LIMIT, strict_maximum=True)
        check_number(self.lr, "lr", strict=True)
        check_number(self.momentum, "momentum", maximum=1.0, strict_maximum=True)
        check_number(self.weight_decay, "weight_decay")
        check_number(self.gamma, "gamma", strict=True)
        check_number(self.sigma, "sigma")
        check_number(self.at_eps, "at_eps", strict=True)
        check_choice(self.amp, AMP_MODES, "amp")
        if self.lam is not None:
            check_number(self.lam, "lam")
        self.milestones = list(self.milestones)
        for milestone in self.milestones:
            check_int(milestone, "milestones")

    def to_dict(self) -> dict:
        return asdict(self)

    def run_settings(self) -> dict:
        """What a run is, for config.json and checkpoints: every field except the one-off actions
        ``resume`` and ``overwrite`` (a run started with ``--overwrite`` must stay resumable)."""
        values = self.to_dict()
        for action in _ACTIONS:
            values.pop(action)
        return values

    @classmethod
    def from_dict(cls, values: dict, saved: bool = False) -> "TrainConfig":
        """A config from a dict. ``saved=True`` for configs read back from a run (checkpoints,
        config.json): those written before ``lam`` was checked may carry an ignored ``lam``."""
        known = {f.name for f in fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown TrainConfig fields {sorted(unknown)}")
        values = dict(values)
        if saved and values.get("lam") is not None and values.get("method", "standard") not in REGULARIZED:
            # Runs saved before lam was checked kept an ignored lam: load them (the value never acted).
            warnings.warn(f"ignoring lam={values['lam']!r} saved with method {values.get('method')!r}, "
                          "which has no regularizer", UserWarning, stacklevel=2)
            values["lam"] = None
        return cls(**values)

    def save(self, path: Path) -> None:
        """config.json: :meth:`run_settings`, written atomically."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(self.run_settings(), indent=2))
        os.replace(tmp, path)

    @staticmethod
    def read_settings(path: Path) -> dict:
        """The settings a run saved (config.json); ValueError naming the file if it is unreadable."""
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise ValueError(f"{path} is not a readable run config ({err}): restore it, or start the run "
                             "again with --overwrite") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path} is not a run config (expected a JSON object)")
        for action in _ACTIONS:  # configs saved before run_settings() carried them
            values.pop(action, None)
        return values


_ACTIONS = ("resume", "overwrite")


PRESETS = {
    "paper": dict(model="vgg11", epochs=80, batch_size=128, lr=0.01, momentum=0.9, weight_decay=5e-4,
                  milestones=[40, 60], gamma=0.1, augment="auto"),
    "cpu": dict(epochs=10, batch_size=128, lr=0.01, momentum=0.9, weight_decay=5e-4, milestones=[5, 8], gamma=0.1),
    "smoke": dict(epochs=2, batch_size=64, milestones=[], max_steps_per_epoch=10),
}


def make_config(preset: str | None = None, **overrides) -> TrainConfig:
    """A :class:`TrainConfig` from a preset name plus explicit overrides (None values ignored)."""
    values = {}
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        values.update(PRESETS[preset])
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values)
