"""Atomic checkpoints, the random-number-generator states a bit-exact resume needs, and the
best checkpoint of a run loaded back (:func:`load_best`)."""

from __future__ import annotations

import os
import random
from pathlib import Path

import numpy as np
import torch

from ..io import save_atomic  # noqa: F401  (re-exported: the engine saves through it)
from ..models import build_model
from .config import TrainConfig


def rng_state() -> dict:
    """Every global generator a training step can draw from."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    # RNG states are CPU byte tensors; a checkpoint loaded with map_location="cuda" holds them on
    # the GPU, which the setters refuse.
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """Load a checkpoint written by the trainer (trusted: it holds Python RNG state)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise ValueError(f"checkpoint {path} is unreadable (corrupt or truncated): {err}") from err


def load_weights(model: torch.nn.Module, path: str | Path, map_location="cpu") -> dict:
    """Load the weights of the trainer checkpoint ``path`` into ``model``; returns the checkpoint
    (its 'epoch', 'config', ...)."""
    state = load_checkpoint(path, map_location=map_location)
    model.load_state_dict(state["model"])
    return state


def load_best(run, name: str = "best.pt", device=None) -> torch.nn.Module:
    """The model of a training run with the weights of its checkpoint ``name`` (``best.pt``: the
    epoch with the best VALIDATION accuracy), in eval mode.

    ``run``: a :class:`~flowtriton.train.Trainer` -- its own model receives the weights, on
    ``device`` (default: the trainer's device) -- or a run folder (the ``out_dir`` of ``flowtriton
    train``, holding ``name``) or a checkpoint file: then the model is built from the
    checkpoint's config (:func:`load_trained_model`, which checks the
    file), on ``device`` (default 'cpu').
    """
    if hasattr(run, "model") and hasattr(run, "out_dir"):  # a Trainer
        device = run.ctx.device if device is None else device
        load_weights(run.model, Path(run.out_dir) / name, map_location=device)
        return run.model.to(device).eval()
    if not isinstance(run, (str, os.PathLike)):
        raise TypeError(f"run must be a Trainer, a run folder or a checkpoint file, got {type(run).__name__}")
    path = Path(run)
    if path.is_dir():
        path = path / name
    return load_trained_model(path, "cpu" if device is None else device)[0]


def load_trained_model(checkpoint: str | Path, device="cpu"):
    """(model in eval mode, TrainConfig, class names) from a trainer checkpoint (last.pt/best.pt)."""
    state = load_checkpoint(checkpoint, map_location=device)
    if isinstance(state, torch.nn.Module):
        raise ValueError(f"checkpoint {checkpoint} is a pickled {type(state).__name__} module, not a checkpoint "
                         "written by flowtriton train; attack such a model from Python with "
                         "flowtriton.attacks.evaluate(model, (images, labels), ...)")
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint {checkpoint} holds a {type(state).__name__}, not a checkpoint written by "
                         "flowtriton train")
    for key in ("model", "config"):
        if key not in state:
            raise ValueError(f"checkpoint {checkpoint} has no {key!r} entry: not written by flowtriton train")
    try:
        cfg = TrainConfig.from_dict(state["config"], saved=True)
    except (TypeError, ValueError) as err:
        raise ValueError(f"checkpoint {checkpoint} has an unusable config: {err}") from None
    classes = state.get("classes") or []
    weights = [k for k in state["model"] if k.endswith("weight")]
    if not weights:
        raise ValueError(f"checkpoint {checkpoint} holds no model weights")
    num_classes = len(classes) or state["model"][weights[-1]].shape[0]
    model = build_model(cfg.model, num_classes, state.get("in_channels", 3))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise ValueError(f"checkpoint {checkpoint}: its weights do not fit the model its config names "
                         f"({cfg.model!r}, {num_classes} classes): {first}") from None
    return model.to(device).eval(), cfg, classes
