"""Build ``embedded/mnist_subset.npz`` from MNIST IDX files (run once; the result is committed).

    python -m flowtriton.data.build_embedded --source /path/to/mnist [--train-per-class 800]

Picks ``train_per_class`` images per class from MNIST train and ``test_per_class`` from t10k with
a fixed seed, and stores them uint8 with ``np.savez_compressed``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from .embedded import EMBEDDED_FILE
from .idx import IDX_FILES, find_idx_file, load_idx_split


def balanced_subset(labels: torch.Tensor, per_class: int, seed: int) -> torch.Tensor:
    """Sorted indices of ``per_class`` seeded-random examples of every class."""
    generator = torch.Generator().manual_seed(seed)
    picks = []
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        if len(members) < per_class:
            raise ValueError(f"class {int(label)} has only {len(members)} examples, per_class={per_class}")
        picks.append(members[torch.randperm(len(members), generator=generator)[:per_class]])
    return torch.cat(picks).sort().values


def build(source: Path, out: Path, train_per_class: int, test_per_class: int, seed: int = 0) -> Path:
    arrays = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        stems = IDX_FILES[split]
        paths = [find_idx_file([source, source / "MNIST" / "raw"], stem) for stem in stems]
        if None in paths:
            raise FileNotFoundError(f"no {stems} IDX files under {source}")
        images, labels = load_idx_split(*paths)
        keep = balanced_subset(labels, per_class, seed)
        arrays[f"{split}_images"] = images[keep, 0].numpy()
        arrays[f"{split}_labels"] = labels[keep].numpy().astype(np.uint8)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="folder with MNIST IDX files (gz or raw)")
    parser.add_argument("--out", type=Path, default=EMBEDDED_FILE)
    parser.add_argument("--train-per-class", type=int, default=800)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    path = build(args.source, args.out, args.train_per_class, args.test_per_class, args.seed)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
