"""flowtriton.data: loaders on real files (when present) and on small files written here."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import stat
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

from flowtriton import data as ftdata
from flowtriton.data import (Augmentation, ImageData, TensorLoader, load_dataset, read_idx, split_train_val)
from flowtriton.data import download as dl
from flowtriton.data.embedded import EMBEDDED_FILE


def _test_data() -> Path | None:
    """FLOWTRITON_TEST_DATA: a folder with the real mnist/, fashion-mnist/ and cifar10-jpeg/."""
    env = os.environ.get("FLOWTRITON_TEST_DATA")
    return Path(env) if env and Path(env).is_dir() else None


REAL = _test_data()
needs_real_data = pytest.mark.skipif(REAL is None, reason="real datasets not found (set FLOWTRITON_TEST_DATA)")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test gets its own cache folder and no FLOWTRITON_DATA."""
    monkeypatch.setenv("FLOWTRITON_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FLOWTRITON_DATA", raising=False)
    return tmp_path / "cache"


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_mnist(folder: Path, n_train=12, n_test=6, compress=True, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            raw = idx_bytes(arr)
            name = f"{split}-{kind}-ubyte"
            if compress:
                (folder / (name + ".gz")).write_bytes(gzip.compress(raw))
            else:
                (folder / name).write_bytes(raw)
        arrays[split] = (images, labels)
    return arrays


# -- IDX ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_round_trip(tmp_path, compress):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    raw = idx_bytes(array)
    path = tmp_path / ("a.gz" if compress else "a")
    path.write_bytes(gzip.compress(raw) if compress else raw)
    out = read_idx(path)
    assert out.dtype == torch.uint8 and tuple(out.shape) == (2, 3, 4)
    assert torch.equal(out, torch.from_numpy(array))


def test_read_idx_truncated_raw_raises(tmp_path):
    raw = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    (tmp_path / "t").write_bytes(raw[:-10])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "t")


def test_read_idx_truncated_gzip_raises(tmp_path):
    blob = gzip.compress(idx_bytes(np.ones((50, 28, 28), np.uint8)))
    (tmp_path / "t.gz").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(ValueError, match="gzip"):
        read_idx(tmp_path / "t.gz")


def test_read_idx_rejects_non_idx(tmp_path):
    (tmp_path / "x").write_bytes(b"PK\x03\x04not an idx file")
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "x")


@pytest.mark.parametrize("layout", ["MNIST/raw", "mnist", "."])
@pytest.mark.parametrize("compress", [True, False])
def test_mnist_layouts(tmp_path, layout, compress):
    arrays = write_mnist(tmp_path / "root" / layout, compress=compress)
    train = load_dataset("mnist", "train", tmp_path / "root")
    test = load_dataset("mnist", "test", tmp_path / "root")
    assert tuple(train.images.shape) == (12, 1, 28, 28) and train.images.dtype == torch.uint8
    assert torch.equal(train.images[:, 0], torch.from_numpy(arrays["train"][0]))
    assert torch.equal(test.labels, torch.from_numpy(arrays["t10k"][1]).long())


def test_mnist_image_label_count_mismatch(tmp_path):
    folder = tmp_path / "mnist"
    write_mnist(folder)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(5, np.uint8))))
    with pytest.raises(ValueError, match="12 images but .* 5 labels"):
        load_dataset("mnist", "train", tmp_path)


def test_missing_dataset_says_where_to_put_files(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("fashion-mnist", "train", tmp_path)
    message = str(info.value)
    assert "--download" in message and str(tmp_path / "fashion-mnist") in message
    assert "train-images-idx3-ubyte.gz" in message


def test_data_root_from_environment(tmp_path, monkeypatch):
    write_mnist(tmp_path / "env-root" / "mnist")
    monkeypatch.setenv("FLOWTRITON_DATA", str(tmp_path / "env-root"))
    assert len(load_dataset("mnist", "test")) == 6


# -- downloads (no network: urlopen is replaced) -------------------------------------------------
def test_download_offline_fails_with_instructions(tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(dl.urllib.request, "urlopen", offline)
    with pytest.raises(ConnectionError, match="Offline") as info:
        load_dataset("mnist", "train", tmp_path, download=True)
    assert str(tmp_path / "mnist") in str(info.value)
    assert not list((tmp_path / "mnist").glob("*")), "no partial file may be left behind"


def test_download_rejects_wrong_md5(tmp_path, monkeypatch):
    monkeypatch.setattr(dl.urllib.request, "urlopen", lambda *a, **k: io.BytesIO(b"not the file"))
    with pytest.raises(ValueError, match="md5"):
        dl.fetch("https://example.invalid/f.gz", "0" * 32, tmp_path / "f.gz")
    assert not (tmp_path / "f.gz").exists()


def test_download_accepts_right_md5(tmp_path, monkeypatch):
    import hashlib

    blob = b"payload"
    monkeypatch.setattr(dl.urllib.request, "urlopen", lambda *a, **k: io.BytesIO(blob))
    path = dl.fetch("https://example.invalid/f.gz", hashlib.md5(blob).hexdigest(), tmp_path / "f.gz")
    assert path.read_bytes() == blob


# -- CIFAR-10 python release ---------------------------------------------------------------------
def write_cifar(root: Path, per_batch=4, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    written = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, per_batch).tolist()
        with open(folder / name, "wb") as handle:
            pickle.dump({b"data": data, b"labels": labels, b"batch_label": name.encode()}, handle)
        written[name] = (data, labels)
    return written


def test_cifar_python_layout(tmp_path):
    written = write_cifar(tmp_path)
    train = load_dataset("cifar10", "train", tmp_path)
    test = load_dataset("cifar10", "test", tmp_path)
    assert tuple(train.images.shape) == (20, 3, 32, 32) and len(test) == 4
    data, labels = written["data_batch_2"]
    # R plane first, then G, then B; each row-major: pixel (c, i, j) = data[c*1024 + i*32 + j].
    assert int(train.images[4, 1, 2, 3]) == int(data[0, 1 * 1024 + 2 * 32 + 3])
    assert int(train.images[4, 2, 31, 0]) == int(data[0, 2 * 1024 + 31 * 32])
    assert train.labels[4:8].tolist() == labels
    assert train.classes[0] == "airplane" and train.classes[9] == "truck"


def test_cifar_truncated_pickle_raises(tmp_path):
    write_cifar(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "test_batch"
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="test_batch"):
        load_dataset("cifar10", "test", tmp_path)


def test_cifar_wrong_shape_raises(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    with open(folder / "test_batch", "wb") as handle:
        pickle.dump({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, handle)
    with pytest.raises(ValueError, match=r"\(N, 3072\)"):
        ftdata.load_cifar10_python(folder, "test")


# -- image folders -----------------------------------------------------------------------------
def write_image_folder(root: Path, classes=("cat", "dog"), per_class=3, size=8, seed=0) -> dict:
    from PIL import Image

    rng = np.random.default_rng(seed)
    pixels = {}
    for split in ("train", "test"):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for k in range(per_class):
                array = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(array).save(root / split / name / f"{k:04d}.png")
                pixels[(split, name, k)] = array
    return pixels


def test_image_folder_decodes_and_caches_outside_data(tmp_path, private_cache, monkeypatch):
    root = tmp_path / "folder"
    pixels = write_image_folder(root)
    for path in [root, *root.rglob("*")]:  # a data root may be read-only
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    data = load_dataset("imagefolder", "train", root)
    assert data.classes == ("cat", "dog") and tuple(data.images.shape) == (6, 3, 8, 8)
    assert torch.equal(data.images[4].permute(1, 2, 0), torch.from_numpy(pixels[("train", "dog", 1)]))
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    cached = list(private_cache.rglob("*.pt"))
    assert len(cached) == 1, "decoded tensors must be cached in the cache folder"
    assert not [p for p in root.rglob("*") if p.suffix == ".pt"], "nothing may be written beside the data"

    def no_decoding(*args, **kwargs):
        raise AssertionError("second load must come from the cache")

    monkeypatch.setattr(ftdata.image_folder, "decode_images", no_decoding)
    again = load_dataset("imagefolder", "train", root)
    assert torch.equal(again.images, data.images)


def test_image_folder_corrupt_image_raises(tmp_path):
    root = tmp_path / "folder"
    write_image_folder(root)
    (root / "test" / "cat" / "0001.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(ValueError, match="0001.png"):
        load_dataset("imagefolder", "test", root)


def test_image_folder_mixed_sizes_raise(tmp_path):
    from PIL import Image

    root = tmp_path / "folder"
    write_image_folder(root)
    Image.new("RGB", (5, 5)).save(root / "test" / "dog" / "9999.png")
    with pytest.raises(ValueError, match="one size"):
        load_dataset("imagefolder", "test", root)


def test_image_folder_labels_come_from_the_training_classes(tmp_path, private_cache):
    import shutil

    root = tmp_path / "folder"
    write_image_folder(root, classes=("airplane", "cat", "ship"), per_class=2)
    shutil.rmtree(root / "test" / "cat")  # a test split that lacks a class must not shift the others
    test = load_dataset("imagefolder", "test", root)
    assert test.classes == ("airplane", "cat", "ship")
    assert test.labels.tolist() == [0, 0, 2, 2]  # ship stays 2 (per-split indexing made it 1: "cat")
    (root / "test" / "zebra").mkdir()
    with pytest.raises(ValueError, match=r"has classes \['zebra'\] that the class map lacks"):
        load_dataset("imagefolder", "test", root)


def test_image_folder_of_greyscale_jpegs_loads_one_channel(tmp_path, private_cache):
    from PIL import Image

    root = tmp_path / "folder"
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / "train" / name).mkdir(parents=True)
        for k in range(2):
            Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(
                root / "train" / name / f"{k}.jpg")
    data = load_dataset("imagefolder", "train", root)
    assert tuple(data.images.shape) == (4, 1, 8, 8)
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / "train" / "b" / "9.png")
    assert load_dataset("imagefolder", "train", root).images.shape[1] == 3  # one colour file: all RGB


def test_image_folder_empty_class_folder_is_refused(tmp_path):
    root = tmp_path / "folder"
    write_image_folder(root)
    (root / "train" / "emu").mkdir()
    with pytest.raises(ValueError, match=r"class folder .*emu holds no .jpg/.jpeg/.png files"):
        load_dataset("imagefolder", "train", root)


def test_split_train_val_refuses_a_fractional_count():
    data = ImageData(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), torch.arange(10))
    with pytest.raises(ValueError, match="val_size must be a fraction in \\(0, 1\\) or a whole count"):
        split_train_val(data, 1.5)
    assert len(split_train_val(data, 2.0)[1]) == 2 and len(split_train_val(data, 0.3)[1]) == 3


# -- embedded subset, split, loader, augmentations ---------------------------------------------------
def test_embedded_subset_is_balanced_small_and_licensed():
    assert EMBEDDED_FILE.stat().st_size < 3_000_000
    note = (EMBEDDED_FILE.parent / "README.md").read_text()
    assert "LeCun" in note and "CC BY-SA 3.0" in note
    train, test = load_dataset("mnist-subset", "train"), load_dataset("mnist-subset", "test")
    assert tuple(train.images.shape) == (8000, 1, 28, 28) and len(test) == 2000
    assert torch.bincount(train.labels).tolist() == [800] * 10
    assert 20 < train.images.float().mean() < 60  # MNIST's mean pixel is ~33/255: real digits, not zeros


def test_split_train_val_is_seeded_and_disjoint():
    data = ImageData(torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1), torch.arange(100) % 10)
    train, val = split_train_val(data, 0.2, seed=3)
    train2, val2 = split_train_val(data, 20, seed=3)
    assert len(train) == 80 and len(val) == 20
    assert torch.equal(val.images, val2.images)
    seen = torch.cat([train.images.flatten(), val.images.flatten()]).sort().values
    assert torch.equal(seen, torch.arange(100, dtype=torch.uint8))
    assert not torch.equal(val.images, split_train_val(data, 20, seed=4)[1].images)
    with pytest.raises(ValueError, match="val_size"):
        split_train_val(data, 100)


def _ids(n=50):
    return ImageData(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1), torch.zeros(n, dtype=torch.long))


def _batches(loader):
    """Example ids (the pixel value) of every batch."""
    return [(x.flatten() * 255).round().long() for x, _ in loader]


def test_loader_order_is_seeded_per_epoch_and_resumable():
    loader = TensorLoader(_ids(), 8, drop_last=True, seed=5)
    first = _batches(loader)
    assert len(first) == 6 and len(set(torch.cat(first).tolist())) == 48
    again = _batches(TensorLoader(_ids(), 8, drop_last=True, seed=5))
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    loader.set_epoch(1)
    assert not torch.equal(_batches(loader)[0], first[0])
    loader.set_epoch(0, start_step=4)
    rest = _batches(loader)
    assert len(rest) == 2 and torch.equal(rest[0], first[4])


def test_loader_shards_cover_the_single_process_batch():
    single = _batches(TensorLoader(_ids(), 8, drop_last=True, seed=1))
    ranks = [_batches(TensorLoader(_ids(), 4, drop_last=True, seed=1, rank=r, world_size=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for step, batch in enumerate(single):
        union = torch.cat([ranks[0][step], ranks[1][step]]).sort().values
        assert torch.equal(union, batch.sort().values)
    assert not set(torch.cat(ranks[0]).tolist()) & set(torch.cat(ranks[1]).tolist())


def test_paper_augmentation_shapes_range_and_determinism():
    images = torch.rand(6, 3, 32, 32)
    aug = Augmentation("paper", size=32)
    a = aug.train(images, torch.Generator().manual_seed(0))
    b = aug.train(images, torch.Generator().manual_seed(0))
    assert a.shape == images.shape and torch.equal(a, b)
    assert 0 <= float(a.min()) and float(a.max()) <= 1
    test = aug.test(images)
    assert test.shape == images.shape
    resized = ftdata.resize(images, 36)
    assert tuple(resized.shape[-2:]) == (36, 36) and torch.equal(test, resized[..., 2:34, 2:34])
    # every random crop is some 32x32 window of the 36x36 resize, possibly mirrored
    windows = resized.unfold(2, 32, 1).unfold(3, 32, 1)  # (N, C, 5, 5, 32, 32)
    for n in range(6):
        cands = windows[n].permute(1, 2, 0, 3, 4).reshape(25, 3, 32, 32)
        hit = [(c - a[n]).abs().max() < 1e-6 or (c.flip(-1) - a[n]).abs().max() < 1e-6 for c in cands]
        assert any(hit)


def test_flip_and_crop_exact():
    x = torch.arange(16.0).view(1, 1, 4, 4).repeat(2, 1, 1, 1)
    from flowtriton.data.augment import crop_at, random_hflip

    out = crop_at(x, torch.tensor([0, 2]), torch.tensor([1, 0]), 2)
    assert out[0, 0].tolist() == [[1, 2], [5, 6]] and out[1, 0].tolist() == [[8, 9], [12, 13]]
    flipped = random_hflip(x, torch.Generator().manual_seed(0), p=1.0)
    assert torch.equal(flipped, x.flip(-1))


# -- the real files in $FLOWTRITON_TEST_DATA ------------------------------------------------------
@needs_real_data
def test_real_mnist():
    train = load_dataset("mnist", "train", REAL)
    assert tuple(train.images.shape) == (60000, 1, 28, 28)
    assert train.labels[:5].tolist() == [5, 0, 4, 1, 9]
    assert torch.bincount(train.labels).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


@needs_real_data
def test_real_fashion_mnist():
    test = load_dataset("fashion-mnist", "test", REAL)
    assert tuple(test.images.shape) == (10000, 1, 28, 28)
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert test.classes[9] == "Ankle boot"


@needs_real_data
def test_real_cifar10_jpeg_folder(private_cache):
    data = load_dataset("cifar10", "test", REAL, max_per_class=5)
    assert tuple(data.images.shape) == (50, 3, 32, 32)
    assert data.labels.tolist() == sorted(data.labels.tolist()) and torch.bincount(data.labels).tolist() == [5] * 10
    assert data.classes == ftdata.CIFAR10_CLASSES
    mean = data.float_images().mean().item()
    assert 0.3 < mean < 0.6, f"mean pixel {mean} is not a natural image's"
    assert list(private_cache.rglob("*.pt")), "decoded JPEGs must be cached in FLOWTRITON_CACHE"


def test_extract_tar_writes_members_and_refuses_escapes(tmp_path):
    import tarfile

    source = tmp_path / "src" / "cifar-10-batches-py"
    source.mkdir(parents=True)
    (source / "test_batch").write_bytes(b"x")
    good = tmp_path / "good.tar.gz"
    with tarfile.open(good, "w:gz") as archive:
        archive.add(source, arcname="cifar-10-batches-py")
    dl.extract_tar(good, tmp_path / "out")
    assert (tmp_path / "out" / "cifar-10-batches-py" / "test_batch").read_bytes() == b"x"
    bad = tmp_path / "bad.tar.gz"
    with tarfile.open(bad, "w:gz") as archive:
        archive.add(source / "test_batch", arcname="../escaped")
    with pytest.raises(ValueError, match="refusing"):
        dl.extract_tar(bad, tmp_path / "out2")
    assert not (tmp_path / "escaped").exists()


def test_evaluation_subset_covers_every_class_even_when_data_is_sorted_by_class():
    images = torch.zeros(40, 1, 2, 2, dtype=torch.uint8)
    by_class = ImageData(images, torch.arange(4).repeat_interleave(10))
    picked = ftdata.evaluation_subset(by_class, 12)
    assert len(picked) == 12 and picked.labels.unique().numel() == 4  # not twelve of class 0
    assert torch.equal(ftdata.evaluation_subset(by_class, 12).labels, picked.labels)  # seeded
    shuffled = ImageData(images, torch.arange(4).repeat(10))
    assert torch.equal(ftdata.evaluation_subset(shuffled, 8).labels, torch.arange(4).repeat(2))  # first N
    assert len(ftdata.evaluation_subset(shuffled, None)) == 40
    with pytest.raises(ValueError, match="count must be a whole number >= 1, got 0"):
        ftdata.evaluation_subset(shuffled, 0)
