"""Image-folder datasets: ``<root>/<split>/<class>/*.jpg|jpeg|png``, decoded with PIL.

Classes are the sub-folders of ``<root>/train`` in sorted order (for CIFAR-10 that is the
canonical label order), mapped once for every split: a ``test/`` folder that lacks one of the
classes keeps the others' labels, and a split holding a class that ``train/`` lacks is an error.
Without a ``train/`` folder the split's own sub-folders are the classes. Decoded uint8 tensors
are cached under the user's cache folder (see :mod:`flowtriton.data.paths`), keyed by the
folder's path and its files' names, sizes and times; the data folder itself is never written to.
A class folder with no image is an error; a split whose files are all greyscale loads as one
channel (``mode='auto'``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from ..checks import check_choice
from ..io import save_atomic
from .paths import cache_dir

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def class_folders(split_dir: Path) -> list[str]:
    """Sorted names of the class sub-folders of ``split_dir``."""
    if not split_dir.is_dir():
        raise FileNotFoundError(f"image folder {split_dir} does not exist")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    if not classes:
        raise ValueError(f"image folder {split_dir} has no class sub-folders (expected <split>/<class>/*.jpg)")
    return classes


def list_image_folder(split_dir: Path, max_per_class: int | None = None,
                      classes: list[str] | None = None) -> tuple[list[str], list[tuple[Path, int]]]:
    """(class names, [(file, label)]) of one split folder, in sorted order. ``classes``: the class
    map (label = position); default: the split's own sub-folders."""
    present = class_folders(split_dir)
    classes = present if classes is None else list(classes)
    unknown = sorted(set(present) - set(classes))
    if unknown:
        raise ValueError(f"image folder {split_dir} has classes {unknown} that the class map lacks "
                         f"({len(classes)} classes, from the training split): add them to train/ or remove them")
    files = []
    for name in present:
        found = sorted(p for p in (split_dir / name).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            raise ValueError(f"class folder {split_dir / name} holds no .jpg/.jpeg/.png files: it would be a class "
                             "with no examples; add its images or remove the folder")
        files += [(p, classes.index(name)) for p in found[:max_per_class]]
    if not files:
        raise ValueError(f"image folder {split_dir} holds no .jpg/.jpeg/.png files")
    return classes, files


def _cache_key(split_dir: Path, files: list[tuple[Path, int]], mode: str) -> str:
    digest = hashlib.sha1(f"{split_dir.resolve()}|{mode}".encode())
    for path, label in files:
        stat = path.stat()
        digest.update(f"{path.name}|{label}|{stat.st_size}|{stat.st_mtime_ns};".encode())
    return digest.hexdigest()[:16]


MODES = ("auto", "RGB", "L")


def _pil():
    """(PIL.Image, PIL.UnidentifiedImageError); ValueError naming the extra without Pillow."""
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ValueError("image folders need Pillow: pip install 'flowtriton[app]'") from None
    return Image, UnidentifiedImageError


def decode_images(files: list[tuple[Path, int]], mode: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Decode files with PIL -> (uint8 (N, C, H, W), int64 labels (N,)); all must share one size.

    ``mode``: 'RGB' (C=3), 'L' (C=1) or 'auto': one channel when every file is greyscale (PIL
    modes '1', 'L', 'LA', 'I', 'I;16', 'F'), else three."""
    Image, UnidentifiedImageError = _pil()
    check_choice(mode, MODES, "mode")
    if mode == "auto":
        mode = "L" if all(_is_greyscale(path) for path, _ in files) else "RGB"
    arrays = []
    for path, _ in files:
        try:
            with Image.open(path) as image:
                arrays.append(np.asarray(image.convert(mode), dtype=np.uint8))
        except (UnidentifiedImageError, OSError) as err:
            raise ValueError(f"cannot decode image {path}: {err}") from err
        if arrays[-1].shape != arrays[0].shape:
            raise ValueError(f"image {path} has size {arrays[-1].shape[:2]} but {files[0][0]} has "
                             f"{arrays[0].shape[:2]}: an image folder must hold images of one size")
    stacked = np.stack(arrays)
    if stacked.ndim == 3:
        stacked = stacked[:, :, :, None]
    images = torch.from_numpy(stacked).permute(0, 3, 1, 2).contiguous()
    return images, torch.tensor([label for _, label in files], dtype=torch.int64)


def _is_greyscale(path: Path) -> bool:
    """True when the file's own PIL mode has one intensity channel (reads the header only)."""
    Image, UnidentifiedImageError = _pil()

    try:
        with Image.open(path) as image:
            return image.mode in ("1", "L", "LA", "I", "I;16", "F")
    except (UnidentifiedImageError, OSError) as err:
        raise ValueError(f"cannot decode image {path}: {err}") from err


def load_image_folder(root: str | Path, split: str, mode: str = "auto", max_per_class: int | None = None,
                      use_cache: bool = True) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """(images uint8 (N, C, H, W), labels int64 (N,), class names) of ``<root>/<split>``.

    ``mode``: PIL mode, 'RGB' (C=3), 'L' (C=1) or 'auto' (one channel when every file of the
    split is greyscale, see :func:`decode_images`). ``max_per_class``: keep the first files of each
    class (sorted by name), for quick runs. Labels index the classes of ``<root>/train`` (see the
    module docstring). The decoded tensors are cached (see module docstring).
    """
    split_dir = Path(root) / split
    train_dir = Path(root) / "train"
    class_map = class_folders(train_dir) if train_dir.is_dir() else None
    classes, files = list_image_folder(split_dir, max_per_class, class_map)
    cache_file = cache_dir() / "image-folder" / f"{split_dir.name}-{_cache_key(split_dir, files, mode)}.pt"
    if use_cache and cache_file.is_file():
        try:
            cached = torch.load(cache_file, weights_only=True)
            return cached["images"], cached["labels"], list(cached["classes"])
        except Exception:  # a damaged cache is rebuilt, never trusted
            pass
    images, labels = decode_images(files, mode)
    if use_cache:
        try:
            save_atomic({"images": images, "labels": labels, "classes": classes}, cache_file)
        except OSError:
            pass  # a read-only cache folder only costs speed
    return images, labels, classes
