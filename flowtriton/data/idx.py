"""IDX files (MNIST, Fashion-MNIST), gzip-compressed or raw.

Layout: 2 zero bytes, a type byte (0x08 = uint8), a byte with the number of dimensions, then one
big-endian int32 per dimension, then the values row-major.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np
import torch

_GZIP_MAGIC = b"\x1f\x8b"
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != _GZIP_MAGIC:
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise ValueError(f"IDX file {path} is a corrupt or truncated gzip stream: {err}") from err


def read_idx(path: str | Path) -> torch.Tensor:
    """Read one IDX file (``.gz`` or raw) into a tensor of the file's shape and type."""
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ValueError(f"{path} is not an IDX file: header starts with {data[:4]!r}, expected 00 00 <type> <ndim>")
    type_code, ndim = data[2], data[3]
    if type_code not in _DTYPES:
        raise ValueError(f"{path}: unknown IDX type byte 0x{type_code:02x}")
    header_end = 4 + 4 * ndim
    if len(data) < header_end:
        raise ValueError(f"{path}: truncated IDX header ({len(data)} bytes for {ndim} dimensions)")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    dtype = np.dtype(_DTYPES[type_code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    body = len(data) - header_end
    if body != expected:
        raise ValueError(f"{path}: IDX header says shape {shape} ({expected} bytes of data) but the file "
                         f"holds {body} bytes: truncated or corrupt")
    array = np.frombuffer(data, dtype=dtype, offset=header_end).reshape(shape)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def find_idx_file(folders: list[Path], stem: str) -> Path | None:
    """First ``<folder>/<stem>.gz`` or ``<folder>/<stem>`` that exists, searching folders in order."""
    for folder in folders:
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


def load_idx_split(images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N, 1, H, W), labels int64 (N,)) from a pair of IDX files."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dim() != 3 or images.dtype != torch.uint8:
        raise ValueError(f"{images_path}: expected uint8 images of shape (N, H, W), got {images.dtype} "
                         f"{tuple(images.shape)}")
    if labels.dim() != 1:
        raise ValueError(f"{labels_path}: expected labels of shape (N,), got {tuple(labels.shape)}")
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{images_path} holds {images.shape[0]} images but {labels_path} holds "
                         f"{labels.shape[0]} labels")
    return images.unsqueeze(1).contiguous(), labels.long()
