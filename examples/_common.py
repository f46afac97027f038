"""Shared helpers of the example scripts: data splits with a training subset, the run record
(command, seed, versions, wall time), a narrower VGG for CPU runs, file locks that let several
processes share one output folder, and small table helpers.

Nothing here is library API; the scripts stay thin on top of ``flowtriton.train`` and
``flowtriton.attacks`` (checkpoints: ``flowtriton.train.load_best``; resumable evaluations:
``flowtriton.attacks.evaluate(..., cache_dir=...)``; attack settings: ``FlowAttack.settings()``).
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import statistics
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: no locks, one process per output folder
    fcntl = None

import torch

REPO = Path(__file__).resolve().parents[1]


def default_data_dir() -> str | None:
    """$FLOWTRITON_DATA, else None (the cache folder; see ``flowtriton.data.paths``)."""
    return os.environ.get("FLOWTRITON_DATA") or None


def versions() -> dict:
    out = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform()}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:  # a CPU install may lack triton
        out["triton"] = None
    try:
        import flowtriton

        out["flowtriton"] = getattr(flowtriton, "__version__", None)
    except ImportError:
        pass
    try:
        import subprocess

        out["git_commit"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True,
                                           text=True, timeout=10).stdout.strip() or None
    except Exception:  # not a checkout
        out["git_commit"] = None
    return out


def portable(value):
    """``value`` with absolute paths made machine-independent (recursively through lists and
    dicts): relative to the repository when inside it, else ``<outside>/<last part>``."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [portable(v) for v in value]
    if isinstance(value, str) and os.path.isabs(value):
        path = Path(value)
        try:
            return path.resolve().relative_to(REPO).as_posix() or "."
        except ValueError:
            return f"<outside>/{path.name}"
    return value


@contextlib.contextmanager
def exclusive_lock(path: Path, wait: bool = True):
    """Hold an advisory lock on the file ``path`` (created if missing) for the ``with`` block;
    yields True when held. ``wait=False``: yields False at once when another process holds it.
    The operating system drops the lock when its process dies, so a killed run never leaves a
    stale lock behind. Without ``fcntl`` (not POSIX) every lock is granted."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield True
        return
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


class RunRecord:
    """``run.json`` in the output folder: the exact command, seed, versions, device, and the wall
    time of every session (a resumed run appends a session, so the total covers interruptions).
    Paths are recorded relative to the repository (see :func:`portable`), never as this machine's
    absolute paths. Several processes may share one folder (each its own session): every save
    re-reads the file under a lock and writes only its own session back, atomically; then
    ``wall_s_total`` counts overlapping sessions once each (process time, not elapsed time)."""

    def __init__(self, out_dir: Path, seed: int, settings: dict):
        self.path = Path(out_dir) / "run.json"
        self.started = time.perf_counter()
        command = [Path(sys.executable).name, *(portable(a) for a in sys.argv)]
        self.data = {
            "command": " ".join(shlex.quote(a) for a in command),
            "cwd": portable(os.getcwd()), "seed": seed, "settings": portable(settings), "versions": versions(),
            "cpu_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        }
        self.session = {"id": uuid.uuid4().hex[:12], "started_utc": _now(), "finished_utc": None, "wall_s": None,
                        "pid": os.getpid(), "command": self.data["command"]}
        self.save()

    def save(self) -> None:
        """Write run.json; the current session's wall time so far is kept, so a run killed
        between stages still accounts for the time it spent up to its last save."""
        if self.session["finished_utc"] is None:
            self.session["wall_s"] = round(time.perf_counter() - self.started, 1)
        with exclusive_lock(self.path.with_name("." + self.path.name + ".lock")):
            old = json.loads(self.path.read_text()) if self.path.is_file() else {}
            sessions = old.get("sessions", [])
            ids = [s.get("id") for s in sessions]
            if self.session["id"] in ids:
                sessions[ids.index(self.session["id"])] = self.session
            else:
                sessions.append(self.session)
            extra = {k: v for k, v in old.items() if k not in self.data and k not in ("sessions", "wall_s_total")}
            data = {**extra, **self.data, "sessions": sessions,
                    "wall_s_total": sum(s["wall_s"] or 0.0 for s in sessions)}
            write_json(self.path, data, indent=2)
        self.data["sessions"], self.data["wall_s_total"] = sessions, data["wall_s_total"]

    def finish(self, **extra) -> float:
        wall = time.perf_counter() - self.started
        self.session.update(finished_utc=_now(), wall_s=round(wall, 1))
        self.data.update(extra)
        self.save()
        return self.data["wall_s_total"]


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_splits(dataset: str, data_dir, val_size, split_seed: int = 0, train_subset: int | None = None,
                subset_seed: int = 0, max_per_class: int | None = None):
    """DataSplits (train, validation held out from train, test). ``train_subset``: keep a seeded
    random subset of the remaining training images (the validation split is drawn first, so it
    does not depend on the subset)."""
    from flowtriton.data import load_dataset, split_train_val
    from flowtriton.train.engine import DataSplits

    train = load_dataset(dataset, "train", data_dir, False, max_per_class)
    test = load_dataset(dataset, "test", data_dir, False, max_per_class)
    train, val = split_train_val(train, val_size, split_seed)
    if train_subset is not None and train_subset < len(train):
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(subset_seed))
        train = train.subset(order[:train_subset].sort().values)
    return DataSplits(train, val, test)


def eval_batch(cfg, data, count: int | None, device):
    """(images float in [0, 1] after the TEST transform, labels) of ``count`` test images: the
    first ``count`` when they hold every class (MNIST, Fashion-MNIST), else a seeded (0) random
    subset in test order (image folders such as the CIFAR-10 JPEGs are sorted by class)."""
    from flowtriton.data import TensorLoader, evaluation_subset
    from flowtriton.train.engine import resolve_augment

    test = evaluation_subset(data.test, count)
    loader = TensorLoader(test, len(test), shuffle=False, augment=resolve_augment(cfg, data.train), train=False,
                          device=device)
    return next(iter(loader))


def register_vgg(width: float, depth: str = "vgg11") -> str:
    """Registry name of ``depth`` at ``width``: ``vgg11`` at width 1, else ``vgg11-w<width>``
    (``flowtriton.models.build_model`` builds scaled VGGs, so ``flowtriton evaluate`` loads them)."""
    return depth if width == 1.0 else f"{depth}-w{width:g}"


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` atomically (a temporary file of this process, then a rename): a kill
    mid-write leaves the old file or none, never a truncated one that a resumed run would read
    back, and two processes writing the same file leave one whole version."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json(path: Path, value, indent: int | None = None) -> None:
    """Write ``value`` as JSON atomically (:func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(value, indent=indent))


def train_step_seconds(history: list, n_train: int) -> float:
    """Seconds of training steps over a run: epochs x ``n_train`` / the median epoch rate
    (images/s) of the engine's history. Validation passes and restarts are not counted, and the
    median keeps an epoch slowed by something else (the process paused, another job on the
    cores) from counting as the method's cost; a sum over epochs would add that time in."""
    rates = [h["images_per_s"] for h in history if h.get("images_per_s")]
    return round(len(rates) * n_train / statistics.median(rates), 1) if rates else 0.0


def md_table(header: list, rows: list) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"
