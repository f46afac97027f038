"""The command line: help, train + resume + evaluate on the embedded subset, offline errors, the demo."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error

import pytest
import torch

from flowtriton.app.cli import main
from flowtriton.regularizers import DEFAULT_FGR_LAM


@pytest.fixture(autouse=True)
def one_thread_private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FLOWTRITON_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FLOWTRITON_DATA", raising=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_help_lists_the_commands(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for word in ("demo", "train", "evaluate", "torchrun", "FLOWTRITON_DATA"):
        assert word in out
    assert main([]) == 2


def test_python_dash_m_runs():
    done = subprocess.run([sys.executable, "-m", "flowtriton", "train", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0 and "--resume" in done.stdout and "--preset" in done.stdout


def test_train_resume_then_evaluate(tmp_path, capsys):
    run = tmp_path / "run"
    common = ["--model", "tiny-cnn", "--batch-size", "32", "--max-steps-per-epoch", "3", "--no-progress",
              "--out-dir", str(run), "--lr", "0.05"]
    assert main(["train", "--epochs", "1", "--method", "fgr", "--lam", "10", *common]) == 0
    assert {"config.json", "log.jsonl", "last.pt", "best.pt"} <= {p.name for p in run.iterdir()}
    # resume with only the output folder (and a new epoch count): the saved config fills in the rest
    assert main(["train", "--resume", "--epochs", "2", "--out-dir", str(run), "--no-progress"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["method"] == "fgr" and config["model"] == "tiny-cnn" and config["epochs"] == 2
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["event"] == "epoch"] == [1, 2]
    assert records[-1]["event"] == "final" and 0 <= records[-1]["test_acc"] <= 1

    out = tmp_path / "eval"
    assert main(["evaluate", str(run / "best.pt"), "--attacks", "flowpgd", "rt", "--size", "small",
                 "--num-examples", "8", "--out-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    attacks = [row["attack"] for row in results["rows"]]
    assert attacks[0] == "clean" and attacks.count("flowpgd") == 4 and "rt" in attacks
    assert all(0 <= row["accuracy"] <= 1 and row["examples"] == 8 for row in results["rows"])
    assert "| flowpgd |" in (out / "results.md").read_text()
    assert (out / "accuracy_vs_budget.png").stat().st_size > 1000 and (out / "gallery.png").stat().st_size > 1000
    assert "| clean |" in capsys.readouterr().out


def test_offline_download_fails_with_instructions(tmp_path, monkeypatch, capsys):
    from flowtriton.data import download

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(download.urllib.request, "urlopen", offline)
    code = main(["train", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "data"), "--download",
                 "--out-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "could not download" in err and str(tmp_path / "data" / "fashion-mnist") in err


def test_evaluate_rejects_a_file_that_is_not_a_checkpoint(tmp_path, capsys):
    bogus = tmp_path / "x.pt"
    bogus.write_bytes(b"not a checkpoint")
    assert main(["evaluate", str(bogus), "--out-dir", str(tmp_path / "e")]) == 1
    assert "x.pt" in capsys.readouterr().err


def test_demo_quick_writes_table_and_plots(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--eval-examples", "16", "--out-dir", str(out), "--no-progress"]) == 0
    table = (out / "results.md").read_text()
    assert "| attack | budget | units | standard | fgr |" in table
    for attack in ("clean", "flowpgd", "adef", "stadv", "rt"):
        assert f"| {attack} |" in table
    results = json.loads((out / "results.json").read_text())
    assert set(results["results"]) == {"standard", "fgr"}
    for name in ("accuracy_vs_budget.png", "gallery.png"):
        assert (out / name).stat().st_size > 5000
    out = capsys.readouterr().out
    assert "| flowpgd |" in out
    assert "1 epoch(s) x 20 steps of 64 images" in out  # --quick says what it trains
    assert "[demo] attacking fgr on 16 test images" in out
    assert f"lam {DEFAULT_FGR_LAM:g}" in out and "fgr: clean" in out  # the one default lambda


# -- no surprises: existing runs, typos, bad folders, silent settings, exit codes ---------------
_QUICK = ["--model", "tiny-cnn", "--batch-size", "32", "--max-steps-per-epoch", "2", "--epochs", "1", "--no-progress"]


def test_train_refuses_an_existing_run_and_a_resume_of_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *_QUICK, "--out-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "training tiny-cnn on mnist-subset" in out and "method standard" in out and "epoch 1/1" in out
    best = (run / "best.pt").read_bytes()
    assert main(["train", *_QUICK, "--out-dir", str(run)]) == 1
    assert "already holds a run" in capsys.readouterr().err and (run / "best.pt").read_bytes() == best
    assert main(["train", *_QUICK, "--out-dir", str(run), "--overwrite", "--seed", "1"]) == 0
    assert json.loads((run / "config.json").read_text())["seed"] == 1
    capsys.readouterr()
    assert main(["train", "--resume", "--out-dir", str(tmp_path / "rnu"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "holds no run to resume" in err and "rnu" in err and not (tmp_path / "rnu").exists()


def test_bad_out_dir_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    # cifar10 is not on disk: the folder must be judged before the data is looked for
    assert main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--out-dir", str(blocker / "run"),
                 "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: out_dir") and "not a writable folder" in err and "Traceback" not in err

    run = tmp_path / "run"
    assert main(["train", *_QUICK, "--out-dir", str(run)]) == 0
    from flowtriton.app import evaluation

    def must_not_run(*args, **kwargs):
        raise AssertionError("no attack may run before --out-dir is checked")

    monkeypatch.setattr(evaluation, "evaluate_checkpoint", must_not_run)
    capsys.readouterr()
    assert main(["evaluate", str(run / "best.pt"), "--out-dir", str(blocker / "eval")]) == 1
    assert "--out-dir" in capsys.readouterr().err


@pytest.mark.parametrize("flags, message", [
    (["--val-size", "1.5"], "val_size must be a fraction in (0, 1) or a whole count >= 1, got 1.5"),
    (["--method", "standard", "--lam", "50"], "method 'standard' has no regularizer, so lam=50 would be ignored"),
])
def test_train_refuses_settings_it_would_silently_change(tmp_path, capsys, flags, message):
    assert main(["train", *_QUICK, "--out-dir", str(tmp_path / "run"), *flags]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_counts_must_be_positive(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["evaluate", str(tmp_path / "x.pt"), "--num-examples", "0"])
    assert info.value.code == 2
    assert "--num-examples: expected a whole number >= 1, got 0" in capsys.readouterr().err


def test_signals_give_the_shells_exit_codes(tmp_path, monkeypatch):
    import signal

    import flowtriton.train as ft_train
    from flowtriton.train import TrainResult

    for signum, code in ((signal.SIGTERM, 143), (signal.SIGINT, 130)):
        result = TrainResult("interrupted", 0, -1.0, -1, None, tmp_path, [], signum)
        monkeypatch.setattr(ft_train, "train", lambda cfg, _r=result: _r)
        assert main(["train", *_QUICK, "--out-dir", str(tmp_path / "run")]) == code


def test_unexpected_errors_keep_their_traceback(tmp_path, monkeypatch, capsys):
    import flowtriton.train as ft_train

    def compile_error(cfg):
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(ft_train, "train", compile_error)
    with pytest.raises(RuntimeError, match="out of memory"):
        main(["train", *_QUICK, "--out-dir", str(tmp_path / "run")])


# -- no surprises, round two -------------------------------------------------------------------
def test_a_run_started_with_overwrite_can_be_resumed(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *_QUICK, "--out-dir", str(run), "--overwrite"]) == 0
    saved = json.loads((run / "config.json").read_text())
    assert "overwrite" not in saved and "resume" not in saved
    assert main(["train", "--resume", "--epochs", "2", "--out-dir", str(run), "--no-progress"]) == 0
    assert json.loads((run / "config.json").read_text())["epochs"] == 2


@pytest.mark.parametrize("command", ["train", "evaluate"])
@pytest.mark.parametrize("device, message", [
    ("gpu", "device must be 'auto' (cuda when available), 'cpu', 'cuda' or 'cuda:N', got 'gpu'"),
    ("cpu:1", "a CPU has no numbered devices"),
])
def test_bad_devices_are_one_line_before_any_work(tmp_path, capsys, command, device, message):
    run = tmp_path / "run"
    if command == "train":
        args = ["train", *_QUICK, "--out-dir", str(run), "--device", device]
    else:
        assert main(["train", *_QUICK, "--out-dir", str(run)]) == 0
        (run / "log.jsonl").unlink()
        args = ["evaluate", str(run / "best.pt"), "--device", device, "--out-dir", str(tmp_path / "eval")]
    capsys.readouterr()
    assert main(args) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    if command == "train":
        assert not (run / "last.pt").exists()
    else:
        assert not (tmp_path / "eval").exists()


def test_evaluate_names_a_checkpoint_whose_config_names_another_model(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *_QUICK, "--out-dir", str(run)]) == 0
    state = torch.load(run / "best.pt", weights_only=False)
    state["config"]["model"] = "small-cnn"
    torch.save(state, run / "other.pt")
    capsys.readouterr()
    assert main(["evaluate", str(run / "other.pt"), "--out-dir", str(tmp_path / "eval")]) == 1
    err = capsys.readouterr().err
    assert "do not fit the model its config names ('small-cnn'" in err and len(err.strip().splitlines()) == 1


def test_evaluate_names_a_pickled_module(tmp_path, capsys):
    from flowtriton.models import build_model

    torch.save(build_model("tiny-cnn", 10, 1), tmp_path / "model.pt")
    assert main(["evaluate", str(tmp_path / "model.pt"), "--out-dir", str(tmp_path / "eval")]) == 1
    err = capsys.readouterr().err
    assert "pickled" in err and "flowtriton.attacks.evaluate" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flags, message", [
    (["--lr", "nan"], "--lr: lr must be a finite number > 0, got nan"),
    (["--momentum", "5"], "--momentum: momentum must be a finite number in [0, 1), got 5.0"),
    (["--gamma", "-1"], "--gamma: gamma must be a finite number > 0"),
    (["--method", "at", "--at-eps", "0"], "--at-eps: at_eps must be a finite number > 0"),
    (["--seed", "-3"], "--seed: seed must be a whole number in [0, 2**63)"),
])
def test_train_settings_that_cannot_train_name_their_flag(tmp_path, capsys, flags, message):
    assert main(["train", *_QUICK, "--out-dir", str(tmp_path / "run"), *flags]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, message", [
    (["demo", "--threads", "-2"], "--threads: expected a whole number >= 0"),
    (["train", "--log-every", "0"], "--log-every: expected a whole number >= 1, got 0"),
])
def test_bad_counts_are_usage_errors(capsys, args, message):
    with pytest.raises(SystemExit) as info:
        main(args)
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_demo_refuses_a_negative_lam_before_training(tmp_path, capsys, monkeypatch):
    from flowtriton.app import demo

    def must_not_train(*args, **kwargs):
        raise AssertionError("no model may train before the settings are checked")

    monkeypatch.setattr(demo, "Trainer", must_not_train)
    assert main(["demo", "--quick", "--lam", "-1", "--out-dir", str(tmp_path / "d")]) == 1
    assert "lam must be a finite number >= 0, got -1.0" in capsys.readouterr().err


def test_threads_flag_sets_torchs_threads(tmp_path):
    assert main(["train", *_QUICK, "--out-dir", str(tmp_path / "run"), "--threads", "2"]) == 0
    assert torch.get_num_threads() == 2
    assert main(["train", *_QUICK, "--out-dir", str(tmp_path / "run2")]) == 0
    assert torch.get_num_threads() == 1  # the default


def test_a_corrupt_config_json_is_named(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *_QUICK, "--out-dir", str(run)]) == 0
    (run / "config.json").write_text("{not json")
    capsys.readouterr()
    assert main(["train", "--resume", "--out-dir", str(run), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "config.json is not a readable run config" in err and str(run) in err


def test_train_help_shows_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for text in ("--lr LR default 0.01", "--epochs EPOCHS default 10", "lam / batch_size^2", "--threads"):
        assert text in out, text


def test_evaluate_says_how_long_it_will_take(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *_QUICK, "--out-dir", str(run)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(run / "best.pt"), "--attacks", "flowpgd", "--size", "small", "--num-examples", "16",
                 "--no-plots", "--no-progress", "--out-dir", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "attacking 16 test images" in out and "about" in out and "flowpgd" in out.split("about", 1)[1]


def test_cuda_graph_without_cuda_is_one_line_before_any_work(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(["train", *_QUICK, "--out-dir", str(tmp_path / "run"), "--cuda-graph"]) == 1
    err = capsys.readouterr().err
    assert "--cuda-graph) needs a CUDA device" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "last.pt").exists()


def test_evaluate_preset_argument_handling(tmp_path, capsys):
    """--preset picks the ensemble and is recorded with its version, settings and the commit;
    --size is its older spelling (small = fast); contradictions and attacks outside the preset
    are one-line errors before any attack runs."""
    run = tmp_path / "run"
    assert main(["train", *_QUICK, "--out-dir", str(run)]) == 0
    out = tmp_path / "eval"
    assert main(["evaluate", str(run / "best.pt"), "--preset", "fast", "--attacks", "flowpgd", "rt", "--num-examples",
                 "8", "--no-plots", "--no-progress", "--out-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    protocol = results["protocol"]
    assert results["preset"] == "fast" and (protocol["preset"], protocol["version"]) == ("fast", 1)
    assert list(protocol["attacks"]) == ["flowpgd", "rt"]
    assert protocol["attacks"]["flowpgd"]["schedule"] == "constant" and protocol["attacks"]["flowpgd"]["steps"] == 20
    assert protocol["attacks"]["flowpgd"]["budgets"] == [0.005, 0.01, 0.02, 0.04]
    assert isinstance(protocol["library"]["commit"], str) and protocol["library"]["commit"]
    assert [e["budget"] for e in results["masking_check"]] == [0.005, 0.01, 0.02, 0.04]
    assert [r["attack"] for r in results["rows"]].count("worst-case-linf") == 4
    assert results["budgets"] == {"linf": [0.005, 0.01, 0.02, 0.04], "tnorm": [0.25, 0.5, 1.0, 2.0]}  # the preset's
    assert results["budgets_given"] == {"pgd_budgets": None, "tnorm_budgets": None}
    assert "preset 'fast' version 1" in (out / "results.md").read_text()
    capsys.readouterr()
    small = tmp_path / "small"
    assert main(["evaluate", str(run / "best.pt"), "--size", "small", "--attacks", "rt", "--num-examples", "8",
                 "--no-plots", "--no-progress", "--out-dir", str(small)]) == 0
    assert json.loads((small / "results.json").read_text())["protocol"]["preset"] == "fast"
    capsys.readouterr()
    for bad, word in ((["--size", "small", "--preset", "standard"], "contradicts"),
                      (["--preset", "paper", "--attacks", "random"], "not in preset 'paper'")):
        assert main(["evaluate", str(run / "best.pt"), *bad, "--out-dir", str(tmp_path / "bad")]) == 1
        err = capsys.readouterr().err
        assert word in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "bad" / "results.json").exists()
    with pytest.raises(SystemExit):
        main(["evaluate", str(run / "best.pt"), "--preset", "strong"])
    assert "invalid choice" in capsys.readouterr().err


def test_evaluate_budget_flags_reach_results_json(tmp_path, capsys):
    """--pgd-budgets (normalized L-inf) and --tnorm-budgets (pixel T-norm) replace the preset's
    budgets for every attack of their kind, and results.json records them."""
    run = tmp_path / "run"
    assert main(["train", *_QUICK, "--out-dir", str(run)]) == 0
    out = tmp_path / "eval"
    assert main(["evaluate", str(run / "best.pt"), "--preset", "fast", "--attacks", "flowpgd", "adef",
                 "--pgd-budgets", "0.03", "0.01", "--tnorm-budgets", "0.7", "--num-examples", "8", "--no-plots",
                 "--no-progress", "--out-dir", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["budgets"] == {"linf": [0.01, 0.03], "tnorm": [0.7]}
    assert results["budgets_given"] == {"pgd_budgets": [0.01, 0.03], "tnorm_budgets": [0.7]}
    attacks = results["protocol"]["attacks"]
    assert attacks["flowpgd"]["budgets"] == [0.01, 0.03] and attacks["adef"]["budgets"] == [0.7]
    rows = [(row["attack"], row["budget"]) for row in results["rows"]]
    assert [b for a, b in rows if a == "flowpgd"] == [0.01, 0.03] and [b for a, b in rows if a == "adef"] == [0.7]
    assert [b for a, b in rows if a == "worst-case-linf"] == [0.01, 0.03]
    assert [b for a, b in rows if a == "worst-case-tnorm"] == [0.7]
    assert [e["budget"] for e in results["masking_check"]] == [0.01, 0.03]


@pytest.mark.parametrize("flags, message", [
    (["--pgd-budgets", "0"], "--pgd-budgets: budgets must be finite numbers > 0, got 0"),
    (["--pgd-budgets", "0.01", "-1"], "--pgd-budgets: budgets must be finite numbers > 0, got -1"),
    (["--tnorm-budgets", "nan"], "--tnorm-budgets: budgets must be finite numbers > 0, got nan"),
    (["--tnorm-budgets", "inf"], "--tnorm-budgets: budgets must be finite numbers > 0, got inf"),
    (["--tnorm-budgets", "1px"], "--tnorm-budgets: budgets must be numbers, got '1px'"),
    (["--pgd-budgets", "0.01", "0.01"], "--pgd-budgets: budget 0.01 is given twice"),
])
def test_bad_budget_flags_are_one_line_before_any_work(tmp_path, capsys, flags, message):
    assert main(["evaluate", str(tmp_path / "x.pt"), *flags, "--out-dir", str(tmp_path / "eval")]) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "eval").exists()


def test_budget_lists_are_checked_from_python_too():
    from flowtriton.app.evaluation import check_budgets, evaluate_checkpoint

    assert check_budgets(None, "pgd_budgets") is None
    assert check_budgets((0.02, 0.01), "pgd_budgets") == [0.01, 0.02]
    with pytest.raises(ValueError, match="tnorm_budgets: give at least one budget"):
        check_budgets([], "tnorm_budgets")
    with pytest.raises(TypeError, match="pgd_budgets: budgets must be numbers"):
        check_budgets(["0.01"], "pgd_budgets")
    with pytest.raises(TypeError, match="pgd_budgets: expected a list"):
        check_budgets(0.01, "pgd_budgets")
    with pytest.raises(ValueError, match="pgd_budgets: budgets must be finite numbers > 0"):
        evaluate_checkpoint("no-such-checkpoint.pt", "unused", pgd_budgets=[-0.01])
