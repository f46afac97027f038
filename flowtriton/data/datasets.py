"""Dataset registry: name -> uint8 tensors, plus the seeded train/validation split.

Names: 'mnist-subset' (embedded, no files needed), 'mnist', 'fashion-mnist', 'cifar10' (the python
release, else an image-folder copy such as ``cifar10-jpeg/``), 'imagefolder' (``data_dir`` is the
folder holding ``train/`` and ``test/``).
"""

from __future__ import annotations

import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checks import check_choice, check_int
from .cifar import CIFAR10_CLASSES, CIFAR10_FOLDER, load_cifar10_python
from .download import download_dataset, where_to_put
from .embedded import load_embedded_mnist
from .idx import IDX_FILES, find_idx_file, load_idx_split
from .image_folder import load_image_folder
from .paths import data_root

DATASETS = ("mnist-subset", "mnist", "fashion-mnist", "cifar10", "imagefolder")
SPLITS = ("train", "test")
_IDX_FOLDERS = {"mnist": ("mnist", "MNIST/raw", "mnist/raw", "MNIST"),
                "fashion-mnist": ("fashion-mnist", "FashionMNIST/raw", "fashion-mnist/raw", "FashionMNIST")}
_CIFAR_IMAGE_FOLDERS = ("cifar10-jpeg", "cifar10", "CIFAR-10-images", "cifar-10")
_DIGITS = tuple(str(i) for i in range(10))
_FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


@dataclass
class ImageData:
    """A split in memory: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple = field(default_factory=tuple)
    name: str = ""

    def __post_init__(self):
        if self.images.dim() != 4:
            raise ValueError(f"images must be (N, C, H, W), got {tuple(self.images.shape)}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be ({self.images.shape[0]},), got {tuple(self.labels.shape)}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else int(self.labels.max()) + 1

    def subset(self, index: torch.Tensor) -> "ImageData":
        return ImageData(self.images[index], self.labels[index], self.classes, self.name)

    def float_images(self) -> torch.Tensor:
        """Images as float32 in [0, 1]."""
        return to_float(self.images)


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0, 1] (float input is returned as float32 unchanged)."""
    return images.float().div_(255) if images.dtype == torch.uint8 else images.float()


def _missing(name: str, root: Path, searched: list[Path]) -> FileNotFoundError:
    where = ", ".join(str(p) for p in searched)
    return FileNotFoundError(
        f"dataset {name!r} not found (searched {where}). Pass --download on a machine with internet, or "
        f"{where_to_put(name, root)}. The embedded 'mnist-subset' needs no files.")


def _load_idx(name: str, split: str, root: Path) -> ImageData:
    folders = [root / sub for sub in _IDX_FOLDERS[name]] + [root]
    images_stem, labels_stem = IDX_FILES[split]
    images_path, labels_path = find_idx_file(folders, images_stem), find_idx_file(folders, labels_stem)
    if images_path is None or labels_path is None:
        raise _missing(name, root, folders)
    images, labels = load_idx_split(images_path, labels_path)
    return ImageData(images, labels, _DIGITS if name == "mnist" else _FASHION, name)


def _load_cifar10(split: str, root: Path, max_per_class: int | None) -> ImageData:
    python_dirs = [root / CIFAR10_FOLDER, root / "cifar10" / CIFAR10_FOLDER, root]
    for folder in python_dirs:
        if (folder / "test_batch").is_file():
            images, labels = load_cifar10_python(folder, split)
            return ImageData(images, labels, CIFAR10_CLASSES, "cifar10")
    folder_dirs = [root / sub for sub in _CIFAR_IMAGE_FOLDERS] + [root]
    for folder in folder_dirs:
        if (folder / split).is_dir():
            images, labels, classes = load_image_folder(folder, split, "RGB", max_per_class)
            if tuple(classes) != CIFAR10_CLASSES:
                raise ValueError(f"{folder / split} has classes {classes}, expected CIFAR-10's {CIFAR10_CLASSES}")
            return ImageData(images, labels, CIFAR10_CLASSES, "cifar10")
    raise _missing("cifar10", root, python_dirs + folder_dirs)


def load_dataset(name: str, split: str, data_dir: str | os.PathLike | None = None, download: bool = False,
                 max_per_class: int | None = None) -> ImageData:
    """Load ``split`` ('train' or 'test') of dataset ``name`` (see module docstring) as uint8.

    ``data_dir``: the data root (else $FLOWTRITON_DATA, else the cache folder). ``download``: fetch
    missing originals (md5-checked) into the data root first. ``max_per_class``: image folders
    only, keep the first files of each class.
    """
    check_choice(name, DATASETS, "dataset")
    check_choice(split, SPLITS, "split")
    if name == "mnist-subset":
        images, labels = load_embedded_mnist(split)
        return ImageData(images, labels, _DIGITS, name)
    root = data_root(data_dir)
    if name == "imagefolder":
        if data_dir is None:
            raise ValueError("dataset 'imagefolder' needs data_dir (--data-dir): the folder holding train/ and test/")
        images, labels, classes = load_image_folder(root, split, "auto", max_per_class)
        return ImageData(images, labels, tuple(classes), name)
    if download:
        try:
            return load_dataset(name, split, root, False, max_per_class)
        except FileNotFoundError:
            download_dataset(name, root)
    if name in _IDX_FOLDERS:
        return _load_idx(name, split, root)
    return _load_cifar10(split, root, max_per_class)


def check_val_size(value) -> int | float:
    """A validation share in (0, 1) (float) or a whole count >= 1 (int, also from 1000.0);
    ValueError otherwise (1.5 is neither)."""
    if not isinstance(value, bool) and isinstance(value, numbers.Real):
        if 0 < value < 1:
            return float(value)
        if value >= 1 and float(value).is_integer():
            return int(value)
    raise ValueError(f"val_size must be a fraction in (0, 1) or a whole count >= 1, got {value!r}")


def split_train_val(data: ImageData, val_size: int | float, seed: int = 0) -> tuple[ImageData, ImageData]:
    """Hold out a seeded random validation split from ``data``.

    ``val_size``: a count (int >= 1) or a fraction in (0, 1). The same seed always gives the
    same split, whatever the training seed, so model selection never touches test data.
    """
    n = len(data)
    val_size = check_val_size(val_size)
    count = int(round(val_size * n)) if isinstance(val_size, float) else val_size
    if not 0 < count < n:
        raise ValueError(f"val_size must leave both splits non-empty for {n} examples, got {val_size!r}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return data.subset(order[count:].sort().values), data.subset(order[:count].sort().values)


def evaluation_subset(data: ImageData, count: int | None, seed: int = 0) -> ImageData:
    """``count`` examples to attack: the first ``count`` when they hold every class present
    (MNIST and Fashion-MNIST test files are shuffled), else a seeded random subset kept in data
    order (image folders such as the CIFAR-10 JPEGs load sorted by class, so the first N would be
    one class). ``None`` or ``count >= len(data)``: all of it."""
    if count is None:
        return data
    count = check_int(count, "count")
    if count >= len(data):
        return data
    index = torch.arange(count)
    if data.labels[index].unique().numel() < data.labels.unique().numel():
        index = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))[:count].sort().values
    return data.subset(index)
