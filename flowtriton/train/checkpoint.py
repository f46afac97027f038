"""Atomic checkpoints and the random-number-generator states a bit-exact resume needs."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from .._io import save_atomic  # noqa: F401  (re-exported: the engine saves through it)


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
