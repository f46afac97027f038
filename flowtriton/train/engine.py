"""The training loop: data, model, objective, SGD + MultiStepLR, validation, checkpoints, logs.

Guarantees: checkpoints are written atomically (``last.pt`` every epoch and on SIGINT/SIGTERM,
``best.pt`` when validation accuracy improves); ``resume=True`` continues exactly where
``last.pt`` stopped, mid-epoch included (model, optimizer, scheduler, global RNG states, the
data order, which is a function of (seed, epoch), epoch, step, best metric), and drops the log
records written after that checkpoint; a NaN/inf loss stops the run with :class:`NonFiniteLoss`
and leaves the last good checkpoint alone; with a seed the run is deterministic on CPU. Model
selection uses the VALIDATION split; the test split is only evaluated once, at the end, for the
report.

An output folder that already holds a run is refused unless ``resume`` or ``overwrite`` is set,
and is checked (writable, not a file) before any data is loaded. Stale temporary checkpoint files
of a killed run are removed at start.

No host sync inside a training step: losses and accuracy counts stay on the device and are read
every ``log_every`` steps (and at the end of an epoch, before any checkpoint is written); that
is when a non-finite loss is noticed. The steps in between have already run with it, but no
checkpoint is written from them, and the error names the first bad step.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from ..io import ensure_writable_dir, remove_stale_temporaries
from .._progress import progress_bar, write
from ..data import Augmentation, ImageData, TensorLoader, load_dataset, split_train_val
from ..models import build_model
from .checkpoint import load_checkpoint, load_weights, rng_state, save_atomic, set_rng_state
from .config import TrainConfig
from .distributed import DistContext, any_rank, init_distributed, shutdown
from .graphed import StaticStep, check_capturable
from .objectives import Objective, method_lam

RUN_FILES = ("config.json", "log.jsonl", "last.pt", "best.pt")   # what makes a folder hold a run
_RESUME_MUST_MATCH = ("dataset", "model", "method", "lam", "seed", "batch_size", "val_size", "split_seed", "augment")


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class DataSplits:
    """train / validation (held out from train) / test, uint8 in memory."""

    train: ImageData
    val: ImageData
    test: ImageData


@dataclass
class TrainResult:
    status: str                      # 'finished' or 'interrupted'
    epoch: int                       # epochs completed
    best_val_acc: float
    best_epoch: int
    test_acc: float | None
    out_dir: Path
    history: list = field(default_factory=list)
    signal: int | None = None        # the signal that interrupted the run (SIGINT 2, SIGTERM 15)


def check_out_dir(cfg: TrainConfig) -> Path:
    """The run folder, checked before any work: ValueError if it is a file, not writable, or
    already holds a run while neither ``cfg.resume`` nor ``cfg.overwrite`` is set."""
    out = Path(cfg.out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir {out} exists and is not a folder")
    found = [name for name in RUN_FILES if (out / name).exists()]
    if found and not (cfg.resume or cfg.overwrite):
        raise ValueError(f"out_dir {out} already holds a run ({', '.join(found)}): continue it with --resume "
                         f"(resume=True) or replace it with --overwrite (overwrite=True)")
    return ensure_writable_dir(out, "out_dir")


def load_splits(cfg: TrainConfig) -> DataSplits:
    """The run's data (:class:`DataSplits`): ``cfg.dataset``'s train split minus the seeded
    validation split (``cfg.val_size``, ``cfg.split_seed``), the validation split, the test split."""
    train = load_dataset(cfg.dataset, "train", cfg.data_dir, cfg.download, cfg.max_per_class)
    test = load_dataset(cfg.dataset, "test", cfg.data_dir, False, cfg.max_per_class)
    train, val = split_train_val(train, cfg.val_size, cfg.split_seed)
    return DataSplits(train, val, test)


def resolve_augment(cfg: TrainConfig, data: ImageData) -> Augmentation:
    """'auto' -> the paper's augmentation for 32x32 colour images, none for anything else."""
    _, c, h, w = data.images.shape
    name = cfg.augment
    if name == "auto":
        name = "paper" if (c == 3 and h == w == 32) else "none"
    return Augmentation(name, size=min(h, w))


@torch.no_grad()
def evaluate_accuracy(model: torch.nn.Module, loader: TensorLoader, amp_dtype=None) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of ``model`` in eval mode over ``loader``; the sums stay on
    the device until the end (one host sync)."""
    was_training = model.training
    model.eval()
    total, loss_sum, correct = 0, None, None
    for images, labels in loader:
        with _autocast(images.device, amp_dtype):
            logits = model(images)
        batch_loss = F.cross_entropy(logits.float(), labels, reduction="sum").double()
        batch_correct = (logits.argmax(1) == labels).sum()
        loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
        correct = batch_correct if correct is None else correct + batch_correct
        total += labels.numel()
    model.train(was_training)
    if total == 0:
        return 0.0, 0.0
    return float(loss_sum) / total, int(correct) / total


def _autocast(device: torch.device, dtype, cache_enabled: bool = True):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype, cache_enabled=cache_enabled)


class _StopOnSignal:
    """SIGINT/SIGTERM set a flag the loop checks after each step; a second SIGINT aborts."""

    def __init__(self):
        self.signum, self._old = None, {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum

    def __exit__(self, *exc):
        for sig, handler in self._old.items():
            signal.signal(sig, handler)


class Trainer:
    """Runs one configured training job; see the module docstring for what it guarantees.

    ``data``: pre-loaded splits (else loaded from ``cfg.dataset``). ``on_step(trainer, epoch,
    step, parts)``: an optional hook after every optimizer step (rank 0 and others alike).
    """

    def __init__(self, cfg: TrainConfig, data: DataSplits | None = None, on_step=None):
        self.cfg, self.on_step = cfg, on_step
        self.ctx: DistContext = init_distributed(cfg.device)
        if cfg.batch_size % self.ctx.world_size:
            raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the world size {self.ctx.world_size}")
        if cfg.cuda_graph:  # before any data is loaded
            check_capturable(cfg.method, self.ctx.device, self.ctx.world_size)
        refused = None
        if self.ctx.is_main:  # one process judges the folder (the others would see its config.json)
            try:
                check_out_dir(cfg)
            except ValueError as err:
                refused = err
        if any_rank(refused is not None, self.ctx):
            raise refused or ValueError(f"out_dir {cfg.out_dir} was refused by rank 0 (see its error)")
        self.out_dir = Path(cfg.out_dir)
        self.data = data or load_splits(cfg)
        self.amp_dtype = self._amp_dtype()
        torch.manual_seed(cfg.seed)
        _, channels, _, _ = self.data.train.images.shape
        num_classes = max(self.data.train.num_classes, self.data.test.num_classes)
        self.model = build_model(cfg.model, num_classes, channels).to(self.ctx.device)
        self.ddp_model = self.model
        if self.ctx.distributed:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.ctx.device.index] if self.ctx.device.type == "cuda" else None
            self.ddp_model = DistributedDataParallel(self.model, device_ids=ids)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                         weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, cfg.milestones, cfg.gamma)
        self.objective = Objective(cfg, attack_model=self.model, world_size=self.ctx.world_size)
        self.static_step = None
        if cfg.cuda_graph:
            device, amp = self.ctx.device, self.amp_dtype
            self.static_step = StaticStep(self.model, self.objective, self.optimizer,
                                          autocast=lambda: _autocast(device, amp, cache_enabled=False))
        augment = resolve_augment(cfg, self.data.train)
        per_rank = cfg.batch_size // self.ctx.world_size
        self.train_loader = TensorLoader(self.data.train, per_rank, shuffle=True, drop_last=True, seed=cfg.seed,
                                         rank=self.ctx.rank, world_size=self.ctx.world_size, augment=augment,
                                         train=True, device=self.ctx.device)
        self.val_loader = TensorLoader(self.data.val, max(per_rank, 256), shuffle=False, augment=augment,
                                       train=False, device=self.ctx.device)
        self.test_loader = TensorLoader(self.data.test, max(per_rank, 256), shuffle=False, augment=augment,
                                        train=False, device=self.ctx.device)
        if len(self.train_loader) == 0:
            per = f" ({per_rank} per process)" if self.ctx.distributed else ""
            raise ValueError(f"batch_size {cfg.batch_size}{per} is larger than the training split "
                             f"({len(self.data.train)} images after holding out {len(self.data.val)} for "
                             "validation): not one full batch to train on; lower --batch-size (batch_size)")
        self.epoch, self.step, self.global_step = 0, 0, 0
        self.best_val_acc, self.best_epoch, self.history = -1.0, -1, []
        self._epoch_stats = self._fresh_stats()
        self._pending: list = []          # per-step device tensors not yet read (see _flush)
        self._chunk_started = time.perf_counter()

    def steps_per_epoch(self) -> int:
        steps = len(self.train_loader)
        return min(steps, self.cfg.max_steps_per_epoch) if self.cfg.max_steps_per_epoch else steps

    def describe(self) -> str:
        """One line: what is trained, on what, how long, where."""
        cfg, lam = self.cfg, method_lam(self.cfg)
        method = cfg.method + (f" (lam {lam:g})" if lam is not None else "")
        amp = f", amp {self.amp_dtype}".replace("torch.", "") if self.amp_dtype is not None else ""
        return (f"training {cfg.model} on {cfg.dataset} ({len(self.data.train)} train / {len(self.data.val)} val / "
                f"{len(self.data.test)} test images), method {method}, {cfg.epochs} epoch(s) x "
                f"{self.steps_per_epoch()} steps of {cfg.batch_size} images, device {self.ctx.device}{amp}, "
                f"seed {cfg.seed} -> {self.out_dir}")

    # -- helpers ---------------------------------------------------------------------------
    def _amp_dtype(self):
        """bfloat16 autocast for amp='bf16' (CUDA or CPU) and for amp='auto' on CUDA; else None."""
        want = self.cfg.amp
        if want == "off" or (want == "auto" and self.ctx.device.type != "cuda"):
            return None
        return torch.bfloat16

    @staticmethod
    def _fresh_stats() -> dict:
        return {"loss_sum": 0.0, "correct": 0, "seen": 0, "acc_seen": 0, "time": 0.0}

    def log(self, record: dict) -> None:
        if not self.ctx.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        with open(self.out_dir / "log.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")

    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "step": self.step,
            "global_step": self.global_step, "best_val_acc": self.best_val_acc, "best_epoch": self.best_epoch,
            "history": self.history, "epoch_stats": dict(self._epoch_stats), "rng": rng_state(),
            "config": self.cfg.run_settings(), "classes": list(self.data.train.classes),
            "in_channels": self.data.train.images.shape[1],
        }

    def save(self, name: str = "last.pt") -> Path | None:
        if not self.ctx.is_main:
            return None
        return save_atomic(self.state_dict(), self.out_dir / name)

    def resume(self) -> bool:
        """Load ``last.pt`` from the output folder if it is there; True when resumed.

        A folder with ``best.pt`` but no ``last.pt`` is refused (starting afresh would overwrite the
        good ``best.pt``). A ``best.pt`` older than ``last.pt`` says (a crash between the two
        saves, see :meth:`_save_epoch_end`) is rewritten from ``last.pt``, which then holds the
        same weights, so the best checkpoint and its label always agree."""
        path = self.out_dir / "last.pt"
        if not path.is_file():
            if (self.out_dir / "best.pt").is_file():
                raise ValueError(f"cannot resume {self.out_dir}: it holds best.pt but no last.pt, so the run "
                                 "cannot continue where it stopped (starting over would replace best.pt). Keep "
                                 "best.pt elsewhere and start again with --overwrite, or evaluate best.pt as it is")
            self.say(f"no checkpoint in {self.out_dir} to resume: starting from the beginning")
            return False
        state = load_checkpoint(path, map_location=self.ctx.device)
        saved = state["config"]
        changed = [k for k in _RESUME_MUST_MATCH if saved.get(k) != getattr(self.cfg, k)]
        if changed:
            differ = ", ".join(f"{k}={getattr(self.cfg, k)!r} (checkpoint {saved.get(k)!r})" for k in changed)
            raise ValueError(f"cannot resume {path}: settings differ from the checkpoint's: {differ}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step, self.global_step = state["epoch"], state["step"], state["global_step"]
        self.best_val_acc, self.best_epoch = state["best_val_acc"], state["best_epoch"]
        self.history, self._epoch_stats = state["history"], state["epoch_stats"]
        set_rng_state(state["rng"])
        if self.ctx.is_main:
            self._reconcile_best(state)
        return True

    def _reconcile_best(self, last: dict) -> None:
        """Make ``best.pt`` what ``last.pt`` says it is. After an epoch that improved, last.pt is
        written first and best.pt second; a kill between them leaves best.pt an epoch behind while
        last.pt (saved at the end of that very epoch, step 0) holds the best weights."""
        if last["best_epoch"] < 1:
            return
        best_path = self.out_dir / "best.pt"
        best_epoch = None
        if best_path.is_file():
            try:
                best_epoch = load_checkpoint(best_path)["epoch"]
            except (ValueError, KeyError):
                best_epoch = None  # unreadable: rebuilt below when last.pt holds the best weights
        if best_epoch == last["best_epoch"]:
            return
        if last["epoch"] == last["best_epoch"] and last["step"] == 0:
            save_atomic(last, best_path)
            self.say(f"best.pt was behind last.pt (a crash between the two saves): rewrote it from epoch "
                     f"{last['epoch']}")
            return
        raise ValueError(f"cannot resume {self.out_dir}: best.pt is from epoch {best_epoch} but last.pt names epoch "
                         f"{last['best_epoch']} as the best, and no checkpoint holds those weights; start again "
                         "with --overwrite")

    def say(self, message: str) -> None:
        """Print on the main process when ``cfg.verbose`` (through tqdm while a bar is shown)."""
        if not (self.cfg.verbose and self.ctx.is_main):
            return
        if self.cfg.progress:
            write(message)
        else:
            print(message, flush=True)

    def _trim_log(self) -> None:
        """Drop the step and epoch records written after the checkpoint being resumed (a run
        killed after its last save would otherwise log those steps twice)."""
        path = self.out_dir / "log.jsonl"
        if not path.is_file():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line cut short by a kill
            event = record.get("event")
            if event == "step" and record.get("global_step", 0) > self.global_step:
                continue
            if event == "epoch" and record.get("epoch", 0) > self.epoch:
                continue
            if event == "final" and self.epoch < self.cfg.epochs:
                continue  # the run goes on (more epochs asked for): its test result will be new
            kept.append(line)
        path.write_text("".join(line + "\n" for line in kept))

    def _prepare_out_dir(self) -> None:
        out = self.out_dir
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        if self.cfg.resume:
            self._trim_log()
        else:  # a new run, or overwrite: nothing of an earlier run may survive
            for name in ("log.jsonl", "last.pt", "best.pt"):
                (out / name).unlink(missing_ok=True)
        self.cfg.save(out / "config.json")

    # -- the loop --------------------------------------------------------------------------
    def fit(self) -> TrainResult:
        cfg = self.cfg
        if cfg.resume:
            self.resume()
            done = self._finished_record()
            if done is not None:  # nothing left to train: report, run no test again, append nothing
                shutdown(self.ctx)
                self.say(f"{self.out_dir} already finished {self.epoch} epoch(s): best val acc "
                         f"{self.best_val_acc:.4f} (epoch {self.best_epoch}), test acc {done['test_acc']:.4f}; "
                         "pass a larger --epochs to train on")
                return TrainResult("finished", self.epoch, self.best_val_acc, self.best_epoch, done["test_acc"],
                                   self.out_dir, self.history)
        if self.ctx.is_main:
            self._prepare_out_dir()
        self.say(self.describe() + (f" (resuming at epoch {self.epoch + 1}, step {self.step})"
                                    if self.epoch or self.step else ""))
        self.log({"event": "start", "resumed_at": [self.epoch, self.step], "world_size": self.ctx.world_size,
                  "device": str(self.ctx.device), "lam": method_lam(cfg), "train": len(self.data.train),
                  "val": len(self.data.val), "test": len(self.data.test)})
        status, signum = "finished", None
        try:
            with _StopOnSignal() as stopper:
                while self.epoch < cfg.epochs:
                    if not self._train_epoch(stopper):
                        status, signum = "interrupted", stopper.signum
                        self.save()
                        self.log({"event": "interrupted", "epoch": self.epoch, "step": self.step,
                                  "signal": signum})
                        break
                    self._end_epoch()
            test_acc = self._final_test() if status == "finished" else None
        finally:
            shutdown(self.ctx)
        return TrainResult(status, self.epoch, self.best_val_acc, self.best_epoch, test_acc, self.out_dir, self.history,
                           signum)

    def _finished_record(self) -> dict | None:
        """The 'final' log record of a run that has trained all its epochs, else None."""
        path = self.out_dir / "log.jsonl"
        if self.epoch < self.cfg.epochs or not path.is_file():
            return None
        final = None
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("event") == "final":
                final = record
        return final

    def _train_epoch(self, stopper: _StopOnSignal) -> bool:
        """Train from (self.epoch, self.step) to the end of the epoch; False if stopped early."""
        cfg, model = self.cfg, self.ddp_model
        model.train()
        self.train_loader.set_epoch(self.epoch, self.step)
        steps = self.steps_per_epoch()
        check_every = cfg.log_every or 50
        self._chunk_started = time.perf_counter()
        progress = None
        if cfg.progress and self.ctx.is_main:
            progress = progress_bar(total=steps, initial=self.step, desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
                                    dynamic_ncols=True, leave=False)
        stats = self._epoch_stats
        try:
            for images, labels in self.train_loader:
                if self.step >= steps:
                    break
                if self.static_step is not None and self.static_step.accepts(images, labels):
                    loss, parts = self.static_step(images, labels)  # a CUDA graph replay
                else:  # eager (and the last partial batch of a graphed run)
                    with _autocast(images.device, self.amp_dtype):
                        loss, parts = self.objective(model, images, labels)
                    self.optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    self.optimizer.step()
                self.step += 1
                self.global_step += 1
                self._remember(loss, parts, labels)
                if progress is not None:
                    progress.update(1)
                due = self.global_step % check_every == 0
                if due:
                    self._flush()
                    if progress is not None:
                        progress.set_postfix(self._postfix(stats))
                    if self.ctx.is_main and cfg.log_every:
                        self.log({"event": "step", "epoch": self.epoch + 1, "step": self.step,
                                  "global_step": self.global_step, **self._scalars(parts)})
                if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0 and self.step < steps:
                    self._flush()  # a mid-epoch checkpoint: --resume continues from this step
                    self.save()
                if self.on_step is not None:
                    self.on_step(self, self.epoch, self.step, parts)
                # a signal is seen at once by one process; DDP processes agree at check points only
                if (due or not self.ctx.distributed) and any_rank(stopper.signum is not None, self.ctx):
                    self._flush()
                    return False
            self._flush()
        finally:
            if progress is not None:
                progress.close()
        return True

    def _remember(self, loss, parts, labels) -> None:
        """Keep this step's loss and correct count on the device (no sync); see :meth:`_flush`."""
        logits = parts.get("logits")
        correct = (logits.argmax(1) == labels).sum() if logits is not None else None
        self._pending.append((self.epoch + 1, self.step, loss.detach(), correct, labels.numel()))

    def _flush(self) -> None:
        """Read the remembered steps (one host sync): raise :class:`NonFiniteLoss` at the first
        non-finite loss (on any process), else add them to the epoch's statistics."""
        pending, self._pending = self._pending, []
        stats, world = self._epoch_stats, self.ctx.world_size
        now = time.perf_counter()
        stats["time"] += now - self._chunk_started
        self._chunk_started = now
        if not pending:
            return
        losses = torch.stack([loss.float() for _, _, loss, _, _ in pending]).tolist()
        bad = [i for i, value in enumerate(losses) if not math.isfinite(value)]
        if any_rank(bool(bad), self.ctx):
            epoch, step, _, _, _ = pending[bad[0] if bad else 0]
            value = losses[bad[0]] if bad else "non-finite (on another process)"
            raise NonFiniteLoss(
                f"loss became {value} at epoch {epoch}, step {step} (method {self.cfg.method}, "
                f"lr {self.optimizer.param_groups[0]['lr']:g}); stopped. The last good checkpoint is "
                f"{self.out_dir / 'last.pt'}: lower --lr or --lam and resume from it.")
        corrects = [c for _, _, _, c, _ in pending if c is not None]
        corrects = torch.stack(corrects).tolist() if corrects else []
        for (_, _, _, correct, count), loss in zip(pending, losses):
            n = count * world
            stats["loss_sum"] += loss * n
            stats["seen"] += n
            if correct is not None:
                stats["acc_seen"] += n
        stats["correct"] += sum(corrects) * world

    @staticmethod
    def _postfix(stats) -> dict:
        out = {"loss": f"{stats['loss_sum'] / max(stats['seen'], 1):.4f}"}
        if stats["acc_seen"]:
            out["acc"] = f"{stats['correct'] / stats['acc_seen']:.3f}"
        out["img/s"] = f"{stats['seen'] / max(stats['time'], 1e-9):.0f}"
        return out

    @staticmethod
    def _scalars(parts) -> dict:
        return {k: float(v.detach().float().mean()) for k, v in parts.items()
                if torch.is_tensor(v) and v.numel() == 1}

    def _end_epoch(self) -> None:
        stats = self._epoch_stats
        val_loss, val_acc = evaluate_accuracy(self.model, self.val_loader, self.amp_dtype)
        lr = self.optimizer.param_groups[0]["lr"]
        with warnings.catch_warnings():  # a run resumed exactly at an epoch's end steps no optimizer first
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
            self.scheduler.step()
        self.epoch += 1
        self.step = 0
        record = {"event": "epoch", "epoch": self.epoch, "lr": lr,
                  "train_loss": stats["loss_sum"] / max(stats["seen"], 1),
                  "train_acc": stats["correct"] / stats["acc_seen"] if stats["acc_seen"] else None,
                  "val_loss": val_loss, "val_acc": val_acc,
                  "images_per_s": stats["seen"] / max(stats["time"], 1e-9)}
        self.history.append(record)
        self._epoch_stats = self._fresh_stats()
        improved = val_acc > self.best_val_acc
        if improved:
            self.best_val_acc, self.best_epoch = val_acc, self.epoch
        self.log(record)
        self._save_epoch_end(improved)
        self.say(f"epoch {self.epoch}/{self.cfg.epochs}: train loss {record['train_loss']:.4f}"
                 + (f" acc {record['train_acc']:.3f}" if record["train_acc"] is not None else "")
                 + f" | val loss {val_loss:.4f} acc {val_acc:.3f}{' *' if improved else ''}"
                 + f" | {record['images_per_s']:.0f} img/s")

    def _save_epoch_end(self, improved: bool) -> None:
        """last.pt, then (if the epoch improved) best.pt: each atomic. A crash between the two
        leaves last.pt saying that it holds the best weights, which :meth:`resume` copies to
        best.pt (the reverse order could lose the previous best weights)."""
        self.save()
        if improved:
            self.save("best.pt")

    def _final_test(self) -> float | None:
        best = self.out_dir / "best.pt"
        if self.ctx.is_main and best.is_file():
            model = build_model(self.cfg.model, self.model_num_classes(), self.data.train.images.shape[1])
            state = load_weights(model, best, map_location=self.ctx.device)
            if state.get("epoch") != self.best_epoch:
                raise ValueError(f"{best} holds epoch {state.get('epoch')} but the run's best epoch is "
                                 f"{self.best_epoch}: not testing weights under the wrong label")
            model.to(self.ctx.device)
        else:
            model = self.model
        test_loss, test_acc = evaluate_accuracy(model, self.test_loader, self.amp_dtype)
        self.log({"event": "final", "best_epoch": self.best_epoch, "best_val_acc": self.best_val_acc,
                  "test_loss": test_loss, "test_acc": test_acc})
        return test_acc

    def model_num_classes(self) -> int:
        return max(self.data.train.num_classes, self.data.test.num_classes)


def train(cfg: TrainConfig, data: DataSplits | None = None, on_step=None) -> TrainResult:
    """Build a :class:`Trainer` from ``cfg`` and run it to the end (or to a signal)."""
    return Trainer(cfg, data, on_step).fit()
