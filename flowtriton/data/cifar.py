"""The CIFAR-10 python release (``cifar-10-batches-py``: pickled dicts).

Each batch file holds ``b'data'``: (10000, 3072) uint8, the R, G and B planes of a 32x32 image
one after the other, row-major; and ``b'labels'``: 10000 ints. Pickles can run code when
loaded: only load files from a source you trust (the official release).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_FILES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def read_cifar_batch(path: str | Path) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch file -> (images uint8 (N, 3, 32, 32), labels int64 (N,))."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            entry = pickle.load(handle, encoding="bytes")
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as err:
        raise ValueError(f"{path} is not a readable CIFAR python batch (corrupt or truncated pickle): {err}") from err
    if not isinstance(entry, dict) or b"data" not in entry:
        raise ValueError(f"{path}: expected a dict with b'data' and b'labels', got {type(entry).__name__}")
    labels = entry.get(b"labels", entry.get(b"fine_labels"))
    if labels is None:
        raise ValueError(f"{path}: no b'labels' entry (keys: {sorted(entry)})")
    data = np.asarray(entry[b"data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{path}: b'data' must be uint8 of shape (N, 3072), got {data.dtype} {data.shape}")
    if len(labels) != data.shape[0]:
        raise ValueError(f"{path}: {data.shape[0]} images but {len(labels)} labels")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    return images, torch.as_tensor(np.asarray(labels, dtype=np.int64))


def load_cifar10_python(folder: Path, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """All batches of ``split`` ('train' or 'test') from a ``cifar-10-batches-py`` folder."""
    parts = [read_cifar_batch(folder / name) for name in CIFAR10_FILES[split]]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
