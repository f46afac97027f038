"""Download the original dataset files (machines with internet), md5-checked.

Offline, :func:`download_dataset` fails with a message that says where to put the files.
"""

from __future__ import annotations

import hashlib
import os
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from ..checks import check_choice

_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FASHION_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"

# (url, md5 of the original file, sub-folder of the data root it goes to)
RESOURCES = {
    "mnist": [
        (_MNIST_URL + "train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        (_MNIST_URL + "train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
        (_MNIST_URL + "t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
        (_MNIST_URL + "t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
    ],
    "fashion-mnist": [
        (_FASHION_URL + "train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        (_FASHION_URL + "train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
        (_FASHION_URL + "t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
        (_FASHION_URL + "t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310"),
    ],
    "cifar10": [
        ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a"),
    ],
}


class DownloadError(ConnectionError):
    """A dataset could not be fetched (offline, a proxy, a server down); says where to put the files."""


def md5_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def where_to_put(name: str, root: Path) -> str:
    """A human-readable note on where a dataset's files go."""
    files = ", ".join(url.rsplit("/", 1)[1] for url, _ in RESOURCES[name])
    target = root / name
    extra = " and extract it there (giving cifar-10-batches-py/)" if name == "cifar10" else ""
    return (f"put {files} (from {RESOURCES[name][0][0].rsplit('/', 1)[0]}/) into {target}{extra}, "
            f"or point --data-dir / FLOWTRITON_DATA at a folder that holds them")


def fetch(url: str, md5: str, target: Path, timeout: float = 60.0) -> Path:
    """Download ``url`` to ``target`` (atomically) unless a file with the right md5 is there."""
    if target.is_file() and md5_of(target) == md5:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            for block in iter(lambda: response.read(1 << 20), b""):
                out.write(block)
        seen = md5_of(Path(tmp))
        if seen != md5:
            raise ValueError(f"download of {url} has md5 {seen}, expected {md5}: not saved")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return target


def extract_tar(archive_path: Path, folder: Path) -> None:
    """Extract a tar archive, refusing members that would land outside ``folder``."""
    with tarfile.open(archive_path) as archive:
        root = folder.resolve()
        for member in archive.getmembers():
            if not (member.isfile() or member.isdir()) or not (root / member.name).resolve().is_relative_to(root):
                raise ValueError(f"{archive_path}: refusing to extract {member.name!r} (link or outside {folder})")
        try:
            archive.extractall(folder, filter="data")
        except TypeError:  # Python without extraction filters; members were checked above
            archive.extractall(folder)


def download_dataset(name: str, root: Path) -> Path:
    """Fetch dataset ``name`` ('mnist', 'fashion-mnist', 'cifar10') into ``root/<name>``."""
    check_choice(name, tuple(sorted(RESOURCES)), "name")
    folder = Path(root) / name
    for url, md5 in RESOURCES[name]:
        target = folder / url.rsplit("/", 1)[1]
        try:
            fetch(url, md5, target)
        except (urllib.error.URLError, OSError) as err:
            raise DownloadError(f"could not download {url} ({err}). Offline? {where_to_put(name, Path(root))}") from err
        if target.name.endswith(".tar.gz"):
            extract_tar(target, folder)
    return folder
