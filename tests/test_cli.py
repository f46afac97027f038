"""The command line: help, train + resume + evaluate on the embedded subset, offline errors, the demo."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error

import pytest
import torch

from flowtriton.cli import main


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
    assert "| flowpgd |" in capsys.readouterr().out
