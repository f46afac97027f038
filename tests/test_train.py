"""Training engine: every method trains, loss falls on a fixed batch, exact resume after a
signal, NaN stop keeps the last good checkpoint, validation-based selection, DDP == one process."""

from __future__ import annotations

import json
import os
import signal
import socket

import pytest
import torch

from flowtriton.data import load_dataset, split_train_val
from flowtriton.train import METHODS, DataSplits, NonFiniteLoss, Objective, Trainer, make_config, train
from flowtriton.train.checkpoint import load_checkpoint
from flowtriton.train.config import REGULARIZED
from flowtriton.models import build_model


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and do not fight other processes for cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def small_splits():
    """Real digits: 512 train / 128 val / 128 test images of the embedded MNIST subset."""
    train_all = load_dataset("mnist-subset", "train")
    test = load_dataset("mnist-subset", "test")
    train_all = train_all.subset(torch.arange(640))
    train, val = split_train_val(train_all, 128, seed=0)
    return DataSplits(train, val, test.subset(torch.arange(128)))


def _cfg(tmp_path, **overrides):
    values = dict(model="tiny-cnn", epochs=2, batch_size=64, lr=0.05, milestones=[1], seed=0, progress=False,
                  device="cpu", out_dir=str(tmp_path / "run"), at_steps=2)
    if overrides.get("method", "standard") in REGULARIZED:
        values["lam"] = 1.0
    values.update(overrides)
    return make_config(None, **values)


@pytest.mark.parametrize("method", METHODS)
def test_method_loss_decreases_on_a_fixed_batch(method, small_splits, tmp_path):
    torch.manual_seed(0)
    model = build_model("tiny-cnn", 10, 1)
    objective = Objective(_cfg(tmp_path, method=method), attack_model=model)
    images = small_splits.train.float_images()[:64]
    labels = small_splits.train.labels[:64]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(25):
        loss, parts = objective(model, images, labels)
        assert torch.isfinite(loss) and "loss" in parts
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    # with 'at' the batch is re-attacked each step, so its loss falls more slowly
    factor = 0.9 if method.endswith("at") else 0.8
    assert losses[-1] < factor * losses[0], f"{method}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


@pytest.mark.parametrize("method", METHODS)
def test_each_method_trains_a_few_steps(method, small_splits, tmp_path):
    cfg = _cfg(tmp_path, method=method, epochs=1, max_steps_per_epoch=3, milestones=[])
    trainer = Trainer(cfg, small_splits)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    result = trainer.fit()
    assert result.status == "finished" and result.epoch == 1
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    epoch = [r for r in records if r["event"] == "epoch"][0]
    assert 0 <= epoch["val_acc"] <= 1 and epoch["train_loss"] > 0
    assert (tmp_path / "run" / "last.pt").is_file() and (tmp_path / "run" / "best.pt").is_file()


def test_training_learns_and_selects_on_validation(small_splits, tmp_path):
    result = train(_cfg(tmp_path, model="small-cnn", epochs=4, lr=0.1, milestones=[]), small_splits)
    accs = [h["val_acc"] for h in result.history]
    assert result.best_val_acc == max(accs) and result.best_epoch == 1 + accs.index(max(accs))
    assert result.best_val_acc > 0.5 and result.test_acc > 0.5
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert best["epoch"] == result.best_epoch


def _interrupt_at(epoch, step):
    def hook(trainer, e, s, parts):
        if (e, s) == (epoch, step):
            os.kill(os.getpid(), signal.SIGTERM)  # the real handler: save and stop after this step
    return hook


@pytest.mark.parametrize("stop_at", [(0, 8), (1, 3)], ids=["after-epoch-1", "mid-epoch-2"])
def test_kill_and_resume_is_bit_identical(small_splits, tmp_path, stop_at):
    # 'fgr' draws a random start from the global generator each step: the resume must restore it.
    method = "fgr" if _has_regularizers() else "standard"
    cfg = _cfg(tmp_path / "a", method=method, epochs=3, milestones=[1, 2])
    full = train(cfg, small_splits)
    assert full.status == "finished"
    reference = load_checkpoint(tmp_path / "a" / "run" / "last.pt")

    cfg_b = _cfg(tmp_path / "b", method=method, epochs=3, milestones=[1, 2])
    first = train(cfg_b, small_splits, on_step=_interrupt_at(*stop_at))
    assert first.status == "interrupted"
    saved = load_checkpoint(tmp_path / "b" / "run" / "last.pt")
    assert (saved["epoch"], saved["step"]) == stop_at
    torch.manual_seed(1234)  # a fresh process would have another global RNG state: resume must not care
    resumed = train(_cfg(tmp_path / "b", method=method, epochs=3, milestones=[1, 2], resume=True), small_splits)
    assert resumed.status == "finished"
    final = load_checkpoint(tmp_path / "b" / "run" / "last.pt")
    for key, value in reference["model"].items():
        assert torch.equal(value, final["model"][key]), key
    assert final["optimizer"]["state"].keys() == reference["optimizer"]["state"].keys()
    for k, state in reference["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], final["optimizer"]["state"][k]["momentum_buffer"])
    assert [h["val_acc"] for h in resumed.history] == [h["val_acc"] for h in full.history]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]


def test_resume_refuses_other_settings(small_splits, tmp_path):
    train(_cfg(tmp_path, epochs=1, max_steps_per_epoch=2), small_splits)
    with pytest.raises(ValueError, match="seed=5"):
        Trainer(_cfg(tmp_path, epochs=2, seed=5, resume=True), small_splits).fit()


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(small_splits, tmp_path):
    def poison(trainer, epoch, step, parts):
        if (epoch, step) == (1, 2):
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))

    with pytest.raises(NonFiniteLoss, match="epoch 2, step 3") as info:
        train(_cfg(tmp_path, epochs=3), small_splits, on_step=poison)
    assert "last.pt" in str(info.value)
    good = load_checkpoint(tmp_path / "run" / "last.pt")
    assert good["epoch"] == 1 and good["step"] == 0
    assert all(torch.isfinite(v).all() for v in good["model"].values())


def _has_regularizers() -> bool:
    try:
        import flowtriton

        flowtriton.FlowGradReg  # noqa: B018
        return True
    except (ImportError, AttributeError):
        return False


# -- DistributedDataParallel -------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank, world_size, port, cfg_dict, splits):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from flowtriton.train import TrainConfig

    train(TrainConfig.from_dict(cfg_dict), splits)


def _one_and_two_processes(splits, tmp_path, **settings) -> tuple[dict, dict]:
    """The final weights of one run in this process and of the same run on 2 gloo processes."""
    import torch.multiprocessing as mp

    torch.set_num_threads(1)
    train(_cfg(tmp_path / "one", **settings), splits)
    double = _cfg(tmp_path / "two", **settings)
    mp.spawn(_ddp_worker, args=(2, _free_port(), double.to_dict(), splits), nprocs=2, join=True)
    return tuple(load_checkpoint(tmp_path / name / "run" / "last.pt")["model"] for name in ("one", "two"))


def test_ddp_two_processes_match_one(small_splits, tmp_path):
    one, two = _one_and_two_processes(small_splits, tmp_path, model="small-cnn", epochs=1, batch_size=32,
                                      max_steps_per_epoch=4, milestones=[], lr=0.1)
    torch.manual_seed(0)
    init = build_model("small-cnn", 10, 1).state_dict()
    moved = max((one[k] - init[k]).abs().max().item() for k in one)
    assert moved > 5e-3, "training must move the weights well beyond the tolerance"
    for key in one:  # summation order differs between 1 and 2 processes: float32 tolerance
        torch.testing.assert_close(two[key], one[key], rtol=1e-3, atol=1e-4)
    records = [json.loads(line) for line in (tmp_path / "two" / "run" / "log.jsonl").read_text().splitlines()]
    assert records[0]["world_size"] == 2


def test_paper_preset_is_the_authors_recipe():
    cfg = make_config("paper", dataset="cifar10", method="fgr")
    assert (cfg.model, cfg.epochs, cfg.batch_size, cfg.lr, cfg.momentum, cfg.weight_decay) == \
        ("vgg11", 80, 128, 0.01, 0.9, 5e-4)
    assert cfg.milestones == [40, 60] and cfg.gamma == 0.1 and cfg.sigma == 0.01
    assert make_config("paper", epochs=3).epochs == 3  # explicit settings override the preset
    with pytest.raises(ValueError, match="preset"):
        make_config("fast")


def _test_cifar():
    """FLOWTRITON_TEST_DATA when it holds ``cifar10-jpeg/test``, else None."""
    from pathlib import Path

    env = os.environ.get("FLOWTRITON_TEST_DATA")
    return Path(env) if env and (Path(env) / "cifar10-jpeg" / "test").is_dir() else None


@pytest.mark.skipif(_test_cifar() is None, reason="CIFAR-10 JPEG folder not found (set FLOWTRITON_TEST_DATA)")
def test_fgr_on_real_cifar_images_with_paper_augmentation(tmp_path, monkeypatch):
    from flowtriton.train.engine import resolve_augment

    monkeypatch.setenv("FLOWTRITON_CACHE", str(tmp_path / "cache"))
    cifar = load_dataset("cifar10", "test", _test_cifar(), max_per_class=12)
    train_part, val = split_train_val(cifar, 20, seed=0)
    assert resolve_augment(_cfg(tmp_path), cifar).name == "paper"
    cfg = _cfg(tmp_path, model="tiny-cnn", method="fgr", lam=100.0, epochs=1, batch_size=25, milestones=[])
    trainer = Trainer(cfg, DataSplits(train_part, val, val))
    result = trainer.fit()
    assert result.status == "finished" and trainer.model.net[0].in_channels == 3
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert records[0]["train"] == 100 and records[-1]["event"] == "final"


def test_resume_on_a_fresh_output_folder_starts_from_scratch(small_splits, tmp_path):
    cfg = _cfg(tmp_path, epochs=1, resume=True, out_dir=str(tmp_path / "new" / "run"))
    result = train(cfg, small_splits)
    assert (tmp_path / "new" / "run" / "last.pt").exists() and len(result.history) == 1


# -- no host sync inside a step; output folder rules; log and temporaries after a kill --------
@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_no_host_sync_between_forward_and_optimizer_step(small_splits, tmp_path, monkeypatch):
    events, inside = [], []
    trainer = Trainer(_cfg(tmp_path, method="fgr", epochs=1, max_steps_per_epoch=6, log_every=3), small_splits)
    objective, step = trainer.objective, trainer.optimizer.step

    def traced_objective(*args):
        inside.append(True)  # the regularizer's own [0, 1] check reads CPU tensors: not the engine's
        out = objective(*args)
        inside.pop()
        events.append("objective")
        return out

    def traced_step(*args, **kwargs):
        events.append("step")
        return step(*args, **kwargs)

    trainer.objective, trainer.optimizer.step = traced_objective, traced_step
    for name in ("item", "tolist", "__bool__", "__float__"):
        original = getattr(torch.Tensor, name)

        def traced(self, *args, _original=original):
            if not inside:
                events.append("sync")
            return _original(self, *args)

        monkeypatch.setattr(torch.Tensor, name, traced)
    trainer.fit()
    monkeypatch.undo()
    steps = [i for i, e in enumerate(events) if e == "objective"]
    assert len(steps) == 6
    for start in steps:  # forward returned -> zero_grad, backward -> optimizer.step: nothing read back
        assert events[start + 1] == "step", events[start:start + 4]
    # the losses are read in batches: at steps 3 and 6 (log_every), not after every step
    between = events[steps[0]:steps[2]]
    assert "sync" not in between


def test_nan_is_caught_at_the_next_check_and_names_its_step(small_splits, tmp_path):
    def poison(trainer, epoch, step, parts):
        if (epoch, step) == (0, 1):
            with torch.no_grad():
                next(trainer.model.parameters()).fill_(float("nan"))

    with pytest.raises(NonFiniteLoss, match=r"loss became nan at epoch 1, step 2 .*lower --lr or --lam"):
        train(_cfg(tmp_path, epochs=1, log_every=5), small_splits, on_step=poison)
    assert not (tmp_path / "run" / "last.pt").exists()  # nothing was saved from the poisoned steps


def test_existing_run_is_refused_without_resume_or_overwrite(small_splits, tmp_path):
    cfg = _cfg(tmp_path, epochs=1, max_steps_per_epoch=2)
    train(cfg, small_splits)
    first = (tmp_path / "run" / "last.pt").stat().st_mtime_ns
    with pytest.raises(ValueError, match=r"already holds a run \(config.json, log.jsonl, last.pt, best.pt\).*--resume"):
        Trainer(cfg, small_splits)
    assert (tmp_path / "run" / "last.pt").stat().st_mtime_ns == first
    result = train(_cfg(tmp_path, epochs=1, max_steps_per_epoch=2, overwrite=True, seed=3), small_splits)
    assert result.status == "finished"
    assert load_checkpoint(tmp_path / "run" / "last.pt")["config"]["seed"] == 3
    with pytest.raises(ValueError, match="resume and overwrite"):
        _cfg(tmp_path, resume=True, overwrite=True)


def test_out_dir_that_cannot_be_written_is_refused_before_loading_data(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ValueError, match="out_dir .*file exists and is not a folder"):
        Trainer(_cfg(tmp_path, out_dir=str(blocker), dataset="cifar10", data_dir=str(tmp_path / "nowhere")))
    with pytest.raises(ValueError, match="out_dir .*run is not a writable folder"):
        Trainer(_cfg(tmp_path, out_dir=str(blocker / "run"), dataset="cifar10", data_dir=str(tmp_path / "nowhere")))


def test_resume_after_a_kill_drops_stale_temporaries_and_duplicate_log_records(small_splits, tmp_path):
    class Killed(Exception):
        pass

    def kill(trainer, epoch, step, parts):
        if (epoch, step) == (1, 6):
            raise Killed  # as kill -9: no save, log records already written past last.pt

    with pytest.raises(Killed):
        train(_cfg(tmp_path, epochs=2, log_every=2), small_splits, on_step=kill)
    run = tmp_path / "run"
    (run / "last.pt.x1y2.tmp").write_bytes(b"half a checkpoint")
    resumed = train(_cfg(tmp_path, epochs=2, log_every=2, resume=True), small_splits)
    assert resumed.status == "finished"
    assert not list(run.glob("*.tmp"))
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r["global_step"] for r in records if r["event"] == "step"]
    assert steps == sorted(set(steps)) == list(range(2, 17, 2))
    assert [r["epoch"] for r in records if r["event"] == "epoch"] == [1, 2]


@pytest.mark.parametrize("bad, message", [
    (dict(val_size=1.5), "val_size must be a fraction in \\(0, 1\\) or a whole count"),
    (dict(val_size=0), "val_size"),
    (dict(method="standard", lam=50.0), "method 'standard' has no regularizer, so lam=50 would be ignored"),
    (dict(method="at", lam=1.0), "method 'at' has no regularizer"),
    (dict(method="fgr", lam="100"), "lam must be a real number >= 0, got str '100'"),
    (dict(method="fgr", lam=True), "lam must be a real number >= 0, got bool True"),
    (dict(method="fgr", lam=-1.0), "lam must be a finite number >= 0, got -1.0"),
    (dict(batch_size=2.5), "batch_size must be a whole number >= 1, got float 2.5"),
    (dict(amp="fp16"), r"amp must be one of \('auto', 'bf16', 'off'\), got 'fp16'"),
    (dict(milestones=[3, 0]), "milestones must be a whole number >= 1, got 0"),
])
def test_config_refuses_silent_surprises(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        make_config(None, out_dir=str(tmp_path), **bad)
    assert make_config(None, val_size=1000.0).val_size == 1000  # a whole count written as a float is fine


def test_train_says_what_it_trains_without_a_progress_bar(small_splits, tmp_path, capsys):
    train(_cfg(tmp_path, method="fgr", lam=2.0, epochs=1, max_steps_per_epoch=2), small_splits)
    out = capsys.readouterr().out
    assert ("training tiny-cnn on mnist-subset (512 train / 128 val / 128 test images), method fgr (lam 2), "
            "1 epoch(s) x 2 steps of 64 images, device cpu") in out
    assert "epoch 1/1: train loss" in out
    train(_cfg(tmp_path / "quiet", epochs=1, max_steps_per_epoch=1, verbose=False), small_splits)
    assert capsys.readouterr().out == ""


def test_interrupted_result_names_the_signal(small_splits, tmp_path):
    result = train(_cfg(tmp_path, epochs=1), small_splits, on_step=_interrupt_at(0, 2))
    assert result.status == "interrupted" and result.signal == signal.SIGTERM


@pytest.mark.gpu
@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
@pytest.mark.parametrize("method", ["fgr", "igr", "standard"])
def test_cuda_training_step_never_waits_for_the_device(small_splits, tmp_path, method):
    """From the second step on, forward + regularizer + backward + optimizer step run with
    torch's sync debug mode set to 'error': any host sync there raises."""
    trainer = Trainer(_cfg(tmp_path, method=method, device="cuda", amp="off", epochs=1, max_steps_per_epoch=4,
                           log_every=1000), small_splits)
    objective, step, calls = trainer.objective, trainer.optimizer.step, []

    def strict_objective(*args):
        calls.append(1)
        if len(calls) > 1:  # the first call may check the images' range once
            torch.cuda.set_sync_debug_mode("error")
        return objective(*args)

    def step_then_relax(*args, **kwargs):
        try:
            return step(*args, **kwargs)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    trainer.objective, trainer.optimizer.step = strict_objective, step_then_relax
    try:
        result = trainer.fit()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert result.status == "finished" and len(calls) == 4


def test_configs_saved_with_an_ignored_lam_still_load():
    import warnings as _warnings

    from flowtriton.train.config import TrainConfig

    with _warnings.catch_warnings(record=True) as caught:
        _warnings.simplefilter("always")
        cfg = TrainConfig.from_dict({"method": "standard", "lam": 1.0}, saved=True)
    assert cfg.lam is None and any("ignoring lam" in str(w.message) for w in caught)


# -- no surprises, round two: the run folder, DDP scale, best/last consistency ------------------
def test_batch_larger_than_the_training_split_is_refused(small_splits, tmp_path):
    with pytest.raises(ValueError, match=r"batch_size 1024 is larger than the training split \(512 images"):
        Trainer(_cfg(tmp_path, batch_size=1024), small_splits)


@pytest.mark.parametrize("bad, message", [
    (dict(lr=float("nan")), "lr must be a finite number > 0"),
    (dict(momentum=5.0), r"momentum must be a finite number in \[0, 1\)"),
    (dict(gamma=-1.0), "gamma must be a finite number > 0"),
    (dict(log_every=0), "log_every must be a whole number >= 1"),
    (dict(method="at", at_eps=0.0), "at_eps must be a finite number > 0"),
    (dict(seed=True), "seed must be a whole number"),
    (dict(seed=2**70), "seed must be a whole number"),
    (dict(checkpoint_every=0), "checkpoint_every must be a whole number >= 1"),
])
def test_config_refuses_settings_that_cannot_train(tmp_path, bad, message):
    with pytest.raises(ValueError, match=message):
        make_config(None, out_dir=str(tmp_path), **bad)


def test_world_size_scale_keeps_the_penalty_of_the_global_batch():
    from flowtriton.regularizers.common import reduce_squared_norms
    from flowtriton.train.objectives import world_size_scale

    # per-example squared norms of d(mean loss)/d tau scale as 1/B^2: a share of B/W has W^2 times
    # the values of the whole batch; DDP averages the shares' penalties
    squared_unit = torch.rand(8)  # ||dl_b/dtau||^2 per example
    for reduction in ("paper", "mean", "sum"):
        whole = reduce_squared_norms(squared_unit / 8**2, reduction, 8)
        shares = [reduce_squared_norms(part / 4**2, reduction, 4) for part in squared_unit.split(4)]
        averaged = torch.stack(shares).mean() * world_size_scale(reduction, 2)
        torch.testing.assert_close(averaged, whole)


def test_ddp_fgr_penalty_means_the_same_at_any_world_size(small_splits, tmp_path):
    """FGR with 2 gloo processes trains the same weights as one process on the same global batch
    (sigma 0: no random start, so both see the same flows). lam is large so that a world-size
    factor on the penalty would move the weights far beyond the tolerance."""
    common = dict(model="small-cnn", method="fgr", lam=2000.0, sigma=0.0, epochs=1, batch_size=32,
                  max_steps_per_epoch=3, milestones=[], lr=0.05)
    one, two = _one_and_two_processes(small_splits, tmp_path, **common)
    quad = _cfg(tmp_path / "quad", **{**common, "lam": 8000.0})  # what the old world_size^2 factor trained
    train(quad, small_splits)
    four = load_checkpoint(tmp_path / "quad" / "run" / "last.pt")["model"]
    assert max((four[k] - one[k]).abs().max().item() for k in one) > 1e-2
    for key in one:
        torch.testing.assert_close(two[key], one[key], rtol=1e-3, atol=1e-4)


class _Killed(BaseException):
    """Stands for kill -9: nothing after it runs, no handler saves."""


def test_a_kill_between_last_and_best_never_tests_the_wrong_weights(small_splits, tmp_path, monkeypatch):
    import flowtriton.train.engine as engine

    run = tmp_path / "run"
    accuracies = iter([0.5, 0.6, 0.7, 0.8])  # val, test, val, test: epoch 2 improves, so it writes best.pt

    def rising_val(model, loader, amp_dtype=None):
        return 0.0, next(accuracies)

    monkeypatch.setattr(engine, "evaluate_accuracy", rising_val)
    train(_cfg(tmp_path, epochs=1), small_splits)
    real_save = Trainer.save

    def save_then_die(self, name="last.pt"):
        if name == "best.pt" and self.epoch == 2:
            raise _Killed
        return real_save(self, name)

    monkeypatch.setattr(Trainer, "save", save_then_die)
    with pytest.raises(_Killed):
        train(_cfg(tmp_path, epochs=2, resume=True), small_splits)
    assert load_checkpoint(run / "best.pt")["epoch"] == 1  # the crash left best.pt an epoch behind
    monkeypatch.setattr(Trainer, "save", real_save)
    result = train(_cfg(tmp_path, epochs=2, resume=True), small_splits)
    best, last = load_checkpoint(run / "best.pt"), load_checkpoint(run / "last.pt")
    assert result.best_epoch == best["epoch"] == 2
    for key, value in last["model"].items():
        assert torch.equal(best["model"][key], value), key


def test_resume_with_best_but_no_last_is_refused_and_keeps_best(small_splits, tmp_path):
    run = tmp_path / "run"
    train(_cfg(tmp_path, epochs=1, max_steps_per_epoch=2), small_splits)
    (run / "last.pt").unlink()
    best = (run / "best.pt").read_bytes()
    with pytest.raises(ValueError, match="holds best.pt but no last.pt"):
        train(_cfg(tmp_path, epochs=2, max_steps_per_epoch=2, resume=True), small_splits)
    assert (run / "best.pt").read_bytes() == best


def test_resuming_a_finished_run_reports_it_without_testing_again(small_splits, tmp_path):
    run = tmp_path / "run"
    first = train(_cfg(tmp_path, epochs=1, max_steps_per_epoch=2), small_splits)
    again = train(_cfg(tmp_path, epochs=1, max_steps_per_epoch=2, resume=True), small_splits)
    assert again.status == "finished" and again.test_acc == first.test_acc
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records].count("final") == 1
    longer = train(_cfg(tmp_path, epochs=2, max_steps_per_epoch=2, resume=True), small_splits)
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records].count("final") == 1 and longer.epoch == 2


def test_checkpoint_every_lets_a_killed_run_resume_mid_epoch_exactly(small_splits, tmp_path):
    method = "fgr"
    full = train(_cfg(tmp_path / "a", method=method, epochs=1), small_splits)
    reference = load_checkpoint(tmp_path / "a" / "run" / "last.pt")

    def die_at_step_6(trainer, epoch, step, parts):
        if step == 6:
            raise _Killed

    with pytest.raises(_Killed):
        train(_cfg(tmp_path / "b", method=method, epochs=1, checkpoint_every=4), small_splits, on_step=die_at_step_6)
    saved = load_checkpoint(tmp_path / "b" / "run" / "last.pt")
    assert (saved["epoch"], saved["step"]) == (0, 4)
    resumed = train(_cfg(tmp_path / "b", method=method, epochs=1, checkpoint_every=4, resume=True), small_splits)
    final = load_checkpoint(tmp_path / "b" / "run" / "last.pt")
    for key, value in reference["model"].items():
        assert torch.equal(value, final["model"][key]), key
    assert resumed.history[0]["train_loss"] == full.history[0]["train_loss"]


def test_bf16_autocast_trains_on_a_cpu(small_splits, tmp_path):
    result = train(_cfg(tmp_path, method="fgr", amp="bf16", epochs=1, max_steps_per_epoch=3), small_splits)
    assert result.status == "finished" and 0 <= result.test_acc <= 1
    assert "amp bfloat16" in Trainer(_cfg(tmp_path / "x", amp="bf16"), small_splits).describe()


# -- the CUDA-graphed step: what a CPU can check -----------------------------------------------
@pytest.mark.parametrize("method", ["standard", "fgr", "igr", "fgr-fd"])
def test_static_buffer_step_equals_the_eager_step(small_splits, tmp_path, method):
    """StaticStep's plumbing (copy into static buffers, step, cloned outputs) without capture
    trains exactly the weights of the eager loop, random start included."""
    from flowtriton.train.graphed import StaticStep

    cfg = _cfg(tmp_path, method=method)
    images = small_splits.train.float_images()[:96]
    labels = small_splits.train.labels[:96]
    batches = [(images[i:i + 32], labels[i:i + 32]) for i in (0, 32, 64)]

    def fresh():
        torch.manual_seed(0)
        model = build_model("tiny-cnn", 10, 1)
        return model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9), Objective(cfg, attack_model=model)

    model_a, opt_a, objective_a = fresh()
    eager_losses = []
    torch.manual_seed(1)
    for x, y in batches:
        loss, _ = objective_a(model_a, x, y)
        opt_a.zero_grad(set_to_none=True)
        loss.backward()
        opt_a.step()
        eager_losses.append(loss.detach())
    model_b, opt_b, objective_b = fresh()
    step = StaticStep(model_b, objective_b, opt_b, capture=False)
    torch.manual_seed(1)
    static_losses = []
    for x, y in batches:
        loss, parts = step(x, y)
        static_losses.append(loss)
        assert not loss.requires_grad and all(not v.requires_grad for v in parts.values() if torch.is_tensor(v))
    assert torch.equal(torch.stack(eager_losses), torch.stack(static_losses))
    assert len({loss.data_ptr() for loss in static_losses}) == 3, "each call returns its own copy"
    for (name, a), b in zip(model_a.state_dict().items(), model_b.state_dict().values()):
        assert torch.equal(a, b), name
    assert not step.accepts(images[:10], labels[:10])
    with pytest.raises(ValueError, match="run that step eagerly"):
        step(images[:10], labels[:10])


@pytest.mark.parametrize("overrides, message", [
    (dict(device="cpu"), "cuda_graph \\(--cuda-graph\\) needs a CUDA device, got cpu"),
])
def test_cuda_graph_is_refused_clearly_where_it_cannot_run(small_splits, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        Trainer(_cfg(tmp_path, cuda_graph=True, **overrides), small_splits)


def test_cuda_graph_refuses_methods_and_world_sizes_it_cannot_capture():
    from flowtriton.train.graphed import check_capturable

    cuda = torch.device("cuda", 0)
    with pytest.raises(ValueError, match="supports methods"):
        check_capturable("at", cuda, 1)
    with pytest.raises(ValueError, match="one process"):
        check_capturable("fgr", cuda, 2)
    check_capturable("fgr", cuda, 1)


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["fgr", "standard"])
def test_cuda_graph_training_matches_eager_on_a_gpu(small_splits, tmp_path, method):
    """Graphed and eager training from the same seed end close (not bitwise: the graph's kernels
    may differ in reduction order from the eager ones)."""
    runs = {}
    for graphed in (False, True):
        cfg = _cfg(tmp_path / str(graphed), method=method, device="cuda", amp="off", epochs=2,
                   max_steps_per_epoch=6, milestones=[1], cuda_graph=graphed)
        result = train(cfg, small_splits)
        assert result.status == "finished"
        runs[graphed] = load_checkpoint(tmp_path / str(graphed) / "run" / "last.pt")["model"]
    for key in runs[False]:
        torch.testing.assert_close(runs[True][key].float(), runs[False][key].float(), rtol=2e-3, atol=2e-4)
