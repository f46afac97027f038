"""The MNIST subset shipped inside the package (``embedded/mnist_subset.npz``).

MNIST, Y. LeCun and C. Cortes, CC BY-SA 3.0 (see ``embedded/README.md``). Built by
``python -m flowtriton.data.build_embedded`` from the IDX files: a class-balanced, seeded
selection from MNIST train (-> 'train') and t10k (-> 'test').
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..checks import check_choice

EMBEDDED_FILE = Path(__file__).parent / "embedded" / "mnist_subset.npz"


def load_embedded_mnist(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 1, 28, 28), labels int64 (N,)) of the embedded subset's ``split``."""
    check_choice(split, ("train", "test"), "split")
    if not EMBEDDED_FILE.is_file():
        raise FileNotFoundError(f"the embedded MNIST subset {EMBEDDED_FILE} is missing from this installation "
                                f"(package data not installed?)")
    with np.load(EMBEDDED_FILE) as archive:
        images = torch.from_numpy(archive[f"{split}_images"].copy())
        labels = torch.from_numpy(archive[f"{split}_labels"].astype(np.int64))
    return images.unsqueeze(1), labels
