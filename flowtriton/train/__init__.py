"""Training: configs and presets, objectives per method, the resumable/distributed trainer."""

from .checkpoint import load_best, load_checkpoint, load_trained_model, save_atomic
from .config import METHODS, PRESETS, TrainConfig, make_config
from .engine import DataSplits, NonFiniteLoss, Trainer, TrainResult, evaluate_accuracy, load_splits, train
from .objectives import DEFAULT_LAM, Objective

__all__ = [
    "DEFAULT_LAM", "DataSplits", "METHODS", "NonFiniteLoss", "Objective", "PRESETS", "TrainConfig", "TrainResult",
    "Trainer", "evaluate_accuracy", "load_best", "load_checkpoint", "load_trained_model", "load_splits", "make_config",
    "save_atomic", "train",
]
