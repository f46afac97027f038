"""The example scripts, run for a few steps on real data, and what they wrote.

Needs real datasets: FLOWTRITON_TEST_DATA names a folder holding ``mnist/`` (IDX files) and
``cifar10-jpeg/`` (image folders); skipped without it. Each script runs in a fresh process, as a
user runs it; a second run of the same command must read the finished stages back (resume) rather
than train again.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def example_module(name: str):
    """Import ``examples/<name>.py`` (the examples are scripts, not a package)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(EXAMPLES))


def _test_data() -> Path | None:
    env = os.environ.get("FLOWTRITON_TEST_DATA")
    return Path(env) if env and Path(env).is_dir() else None


DATA = _test_data()
needs_mnist = pytest.mark.skipif(DATA is None or not (DATA / "mnist").is_dir(),
                                 reason="MNIST IDX files not found (set FLOWTRITON_TEST_DATA)")
needs_cifar = pytest.mark.skipif(DATA is None or not (DATA / "cifar10-jpeg").is_dir(),
                                 reason="CIFAR-10 JPEG folder not found (set FLOWTRITON_TEST_DATA)")


def _run(script: str, *args: str, cwd: Path) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{script} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def _check_record(out: Path, script: str, sessions: int) -> None:
    record = json.loads((out / "run.json").read_text())
    assert script in record["command"] and "--out-dir" in record["command"]
    assert record["seed"] == 0
    assert record["versions"]["torch"] and record["versions"]["python"] and "triton" in record["versions"]
    assert len(record["sessions"]) == sessions
    assert all(s["wall_s"] is not None and s["wall_s"] > 0 for s in record["sessions"])
    assert record["wall_s_total"] == pytest.approx(sum(s["wall_s"] for s in record["sessions"]))


@needs_mnist
def test_compare_methods_writes_results_table_and_plots(tmp_path):
    out = tmp_path / "cmp"
    args = ["--dataset", "mnist", "--data-dir", str(DATA), "--methods", "standard", "fgr", "--test-size", "200",
            "--train-subset", "256", "--val-size", "128", "--epochs", "1", "--max-steps-per-epoch", "2",
            "--batch-size", "64", "--eval-subset", "12", "--calibrate-steps", "1", "--fgr-grid", "50", "100",
            "--attack-size", "small", "--pgd-steps", "2", "--tnorm-budgets", "0.5", "1",
            "--gallery-attacks", "flowpgd", "--no-progress", "--out-dir", str(out)]
    _run("compare_methods.py", *args, cwd=tmp_path)

    results = json.loads((out / "results.json").read_text())
    for key in ("dataset", "model", "lambdas", "calibration", "training", "results", "units", "seed", "wall_s",
                "eval_images", "pgd_budgets", "tnorm_budgets", "mean_robust_accuracy", "claims_markdown"):
        assert key in results, key
    assert results["dataset"] == "mnist" and results["eval_images"] == 12
    assert set(results["results"]) == {"standard", "fgr"}
    # calibration ran the standard model and both FGR lambdas, and kept one of the grid values
    assert set(results["calibration"]["runs"]) == {"standard", "fgr-50", "fgr-100"}
    assert results["lambdas"]["fgr"] in (50.0, 100.0)
    attacks = {(row["attack"], row["budget"]) for row in results["results"]["fgr"]["rows"]}
    assert ("clean", None) in attacks and ("rt", None) in attacks
    assert {("flowpgd", b) for b in results["pgd_budgets"]} <= attacks
    assert {("adef", 0.5), ("adef", 1.0), ("stadv", 0.5), ("stadv", 1.0)} <= attacks
    for res in results["results"].values():
        assert all(0.0 <= row["accuracy"] <= 1.0 for row in res["rows"])
    table = (out / "results.md").read_text()
    assert "| attack | budget | units | standard | fgr (lam" in table and "| flowpgd |" in table
    for png in ("accuracy_vs_budget.png", "gallery.png"):
        assert (out / png).stat().st_size > 1000
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert (out / "ckpt" / "fgr" / "best.pt").is_file()
    _check_record(out, "compare_methods.py", 1)

    # the same command again: every stage is read back (no new training steps), one more session
    log = (out / "ckpt" / "fgr" / "log.jsonl").read_text().count('"event": "step"')
    _run("compare_methods.py", *args, cwd=tmp_path)
    assert (out / "ckpt" / "fgr" / "log.jsonl").read_text().count('"event": "step"') == log
    assert json.loads((out / "results.json").read_text())["results"] == results["results"]
    _check_record(out, "compare_methods.py", 2)


@needs_cifar
def test_reproduce_cifar10_vgg11_reduced(tmp_path):
    import torch

    out = tmp_path / "repro"
    _run("reproduce_cifar10_vgg11.py", "--data-dir", str(DATA), "--lams", "0", "300", "--epochs", "1",
         "--width", "0.125", "--max-per-class", "20", "--val-size", "50", "--max-steps-per-epoch", "2",
         "--batch-size", "32", "--eval-subset", "16", "--attack-steps", "3", "--device", "cpu", "--threads", "1",
         "--no-progress", "--out-dir", str(out), cwd=tmp_path)
    first = json.loads((out / "results.json").read_text())
    assert first["runs"]["lam0"]["other_attacks"] is None
    # the same run again with the other attacks: training and the multi-step attack are read back
    _run("reproduce_cifar10_vgg11.py", "--data-dir", str(DATA), "--lams", "0", "300", "--epochs", "1",
         "--width", "0.125", "--max-per-class", "20", "--val-size", "50", "--max-steps-per-epoch", "2",
         "--batch-size", "32", "--eval-subset", "16", "--attack-steps", "3", "--device", "cpu", "--threads", "1",
         "--other-attacks", "adef", "stadv", "rt", "--no-progress", "--out-dir", str(out), cwd=tmp_path)
    results = json.loads((out / "results.json").read_text())
    for key in ("dataset", "model", "epochs", "milestones", "runs", "eval_images", "eps_normalized", "attack_steps",
                "full_recipe", "seed", "wall_s"):
        assert key in results, key
    assert results["model"] == "vgg11-w0.125" and results["full_recipe"] is False
    assert set(results["runs"]) == {"lam0", "lam300"}
    assert results["runs"]["lam0"]["method"] == "standard" and results["runs"]["lam300"]["method"] == "fgr"
    assert results["runs"]["lam300"]["paper"] == {"clean_acc": 0.8536, "robust_acc": 0.5515}
    for run in results["runs"].values():
        assert run["examples"] == 16 and 0.0 <= run["robust_acc"] <= run["clean_acc"] <= 1.0
        assert run["robust_acc"] == first["runs"][f"lam{run['lam']:g}"]["robust_acc"] and run["train_step_s"] > 0
        others = run["other_attacks"]
        accuracy = {(r["attack"], r["budget"]): r["accuracy"] for r in others["rows"]}
        assert {("adef", 0.25), ("stadv", 1.0), ("rt", None), ("multi-step", None)} <= set(accuracy)
        # the worst case, recomputed from the cached per-example masks (rt not part of it): the
        # multi-step attack's record, and evaluate's cache of each other attack (robust mask per budget)
        ckpt = out / "ckpt" / f"lam{run['lam']:g}"
        flags = [json.loads((ckpt / "attack.json").read_text())["masks"][k] for k in ("clean", "multi-step")]
        flags += ["".join("1" if v else "0" for v in torch.load(ckpt / "other_attacks" / f"{n}.pt",
                                                                 weights_only=True)["robust"][0.25].tolist())
                  for n in ("adef", "stadv")]
        survived = sum(all(f[i] == "1" for f in flags) for i in range(16)) / 16
        assert others["worst_case"] == pytest.approx(survived)
        assert others["worst_case"] <= min(accuracy[("multi-step", None)], accuracy[("adef", 0.25)],
                                           accuracy[("stadv", 0.25)])
        assert set(others["eval_s"]) == {"adef", "stadv", "rt"}
    # the eval subset of the class-sorted JPEG folder is not all one class
    table = (out / "results.md").read_text()
    assert "REDUCED schedule" in table and "| 300 |" in table and "VALIDATION" in table
    assert "## Other attacks" in table and "worst case (multi-step" in table
    assert (out / "robustness_vs_lambda.png").read_bytes()[:4] == b"\x89PNG"
    _check_record(out, "reproduce_cifar10_vgg11.py", 2)



def test_run_records_hold_no_absolute_paths(tmp_path):
    """run.json is portable: paths relative to the repository, others reduced to their last part."""
    root = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(root / "examples"))
    try:
        from _common import portable
    finally:
        sys.path.remove(str(root / "examples"))
    assert portable(str(root / "runs" / "x")) == "runs/x"
    assert portable({"data": "/somewhere/else/datasets", "n": 3, "l": ["rel/path", str(root)]}) == \
        {"data": "<outside>/datasets", "n": 3, "l": ["rel/path", "."]}
    for record in (root / "examples" / "results").glob("*/run.json"):
        text = record.read_text()
        assert '"/' not in text, f"{record} holds an absolute path"
    # any machine's folders, not only this one's (a GPU machine's interpreter, site-packages, build tree)
    machine_path = re.compile(r"(?<![\w.<>/])/(?:tmp|work|root|home|opt|usr|var|srv|mnt|pytorch)/")
    for folder in ("examples/results", "benchmarks/results"):
        for path in (root / folder).rglob("*"):
            if "ckpt" in path.relative_to(root).parts:  # checkpoints of a run in progress: never committed
                continue
            if path.suffix in (".json", ".md", ".csv", ".log", ".xml") and path.is_file():
                assert not machine_path.search(path.read_text(errors="replace")), f"{path} holds a machine path"


def _recipe(out: Path, *extra: str, cwd: Path) -> subprocess.CompletedProcess:
    """One stage of examples/gpu_recipe.py, tiny: VGG-11 at width 0.125, 2 epochs, 4 lambdas, on CPU."""
    data = (["--dataset", "cifar10", "--data-dir", str(DATA), "--max-per-class", "30", "--val-size", "60"]
            if DATA is not None and (DATA / "cifar10-jpeg").is_dir() else
            ["--dataset", "synthetic", "--train-subset", "256", "--val-size", "100"])
    args = [*data, "--width", "0.125", "--epochs", "2", "--batch-size", "32", "--eval-subset", "64",
            "--attack-steps", "3", "--eval-batch-size", "32", "--device", "cpu", "--threads", "1",
            "--out-dir", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(EXAMPLES / "gpu_recipe.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_gpu_recipe_runs_in_stages_and_resumes_exactly(tmp_path):
    """Stage budgets stop the run (exit 75, state saved): by time, mid-epoch, and inside the attack
    phase; the same command resumes, and the staged run ends with the same weights and table as an
    unbroken run. 24 units of work: 2 epochs x 8 steps (4 lambdas each), then 4 x 2 attack chunks."""
    import torch

    staged = tmp_path / "staged"
    # a time budget shorter than one step: the stage still does one unit, then stops
    procs = [_recipe(staged, "--stage-seconds", "0.1", "--reserve-seconds", "0", cwd=tmp_path)]
    for _ in range(3):  # then 8 units per stage: 1 -> 9 (epoch 2, step 2) -> 17 (first attack chunk) -> 24
        procs.append(_recipe(staged, "--stage-units", "8", cwd=tmp_path))
    codes = [p.returncode for p in procs]
    assert codes == [75, 75, 75, 0], [codes, procs[-1].stdout[-3000:], procs[-1].stderr[-3000:]]
    ends = [p.stdout.split("STAGE END")[-1] for p in procs[:-1]]
    assert "stage budget 0.1 s" in ends[0] and "phase train, epoch 0, step 1:" in ends[0]
    assert "8 units" in ends[1] and "phase train, epoch 1, step 1:" in ends[1]
    assert "phase attack" in ends[2] and "lam0: attacked 64" not in procs[2].stdout
    assert all("run the same command again" in end for end in ends)

    results = json.loads((staged / "results.json").read_text())
    assert set(results["runs"]) == {"lam0", "lam100", "lam200", "lam300"}
    assert results["stages"] == 4 and results["full_recipe"] is False
    assert results["epochs"] == 2 and results["eval_images"] == 64
    for tag, run in results["runs"].items():
        assert run["lam"] == float(tag[3:]) and run["examples"] == 64
        assert 0.0 <= run["robust_acc"] <= run["clean_acc"] <= 1.0
        assert [h["epoch"] for h in run["history"]] == [1, 2] and run["best_epoch"] in (1, 2)
    table = (staged / "results.md").read_text()
    assert "REDUCED" in table and "VALIDATION" in table
    assert all(f"| {lam} |" in table for lam in (0, 100, 200, 300))
    _check_record(staged, "gpu_recipe.py", 4)
    assert json.loads((staged / "run.json").read_text())["status"] == "finished"

    # the same command once more: nothing runs again, exit 0, the table is printed again
    again = _recipe(staged, cwd=tmp_path)
    assert again.returncode == 0 and "| 300 |" in again.stdout and "epoch 1/2" not in again.stdout

    # an unbroken run gives the same best weights (bit for bit) and the same table
    whole = tmp_path / "whole"
    proc = _recipe(whole, "--stage-seconds", "600", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((whole / "results.json").read_text())["stages"] == 1
    for tag in results["runs"]:
        a = torch.load(staged / "models" / f"{tag}.pt", weights_only=False)["state_dict"]
        b = torch.load(whole / "models" / f"{tag}.pt", weights_only=False)["state_dict"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), tag
    assert json.loads((whole / "results.json").read_text())["runs"]["lam300"]["robust_acc"] == \
        results["runs"]["lam300"]["robust_acc"]

    # resuming with other settings is refused, naming the setting
    changed = _recipe(whole, "--epochs", "3", cwd=tmp_path)
    assert changed.returncode != 0 and "epochs" in changed.stderr


def test_device_loader_batches_are_seeded_resumable_and_match_the_test_transform():
    import torch

    from flowtriton.data import Augmentation, DeviceLoader, ImageData

    images = torch.randint(0, 256, (70, 3, 32, 32), dtype=torch.uint8)
    data = ImageData(images, torch.arange(70) % 10)
    paper = Augmentation("paper", 32)
    loader = DeviceLoader(data, 16, "cpu", paper, train=True, seed=3)
    loader.set_epoch(2)
    first = list(loader)
    assert len(first) == 5 and [b[0].shape[0] for b in first] == [16, 16, 16, 16, 6]
    assert all(b[0].dtype == torch.float32 and b[0].shape[1:] == (3, 32, 32) for b in first)
    assert all(0 <= b[0].min() and b[0].max() <= 1 for b in first)
    assert sorted(torch.cat([b[1] for b in first]).tolist()) == sorted(data.labels.tolist())  # each example once
    loader.set_epoch(2, start_step=3)  # resume: the same batches from step 3 on
    resumed = list(loader)
    assert len(resumed) == 2 and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                                     for a, b in zip(first[3:], resumed))
    loader.set_epoch(3)
    assert not torch.equal(next(iter(loader))[1], first[0][1])  # a new order each epoch
    test = DeviceLoader(data, 70, "cpu", paper, train=False)
    assert torch.equal(next(iter(test))[0], paper.test(data.float_images()))
    with pytest.raises(TypeError, match="uint8"):
        DeviceLoader(ImageData(images.float(), data.labels), 16, "cpu")
    with pytest.raises(ValueError, match="batch_size"):
        DeviceLoader(data, 0, "cpu")


def test_frontier_runs_points_resumes_per_attack_and_reports(tmp_path):
    """The frontier runner on the embedded digits: every point trained, attacked with masks (each
    attack's outcome cached by flowtriton.attacks.evaluate(cache_dir=...)), a report with curves,
    claims and the cost table; a second run reads everything back; a point whose evaluation was cut
    short redoes only the missing attack."""
    out = tmp_path / "fr"
    args = ["--dataset", "mnist-subset", "--methods", "standard", "fgr", "igr", "--seeds", "0", "1",
            "--epochs", "2", "--milestones", "1", "--max-steps-per-epoch", "2", "--val-size", "100",
            "--eval-subset", "16", "--attack-size", "small", "--no-progress", "--out-dir", str(out)]
    _run("frontier.py", *args, cwd=tmp_path)
    points = sorted(p.name for p in (out / "points").glob("*.json"))
    assert points == sorted(f"{t}-s{s}.json" for t in ("standard", "fgr-lam300", "igr-lam10000") for s in (0, 1))
    record = json.loads((out / "points" / "fgr-lam300-s1.json").read_text())
    assert record["seed"] == 1 and record["lam"] == 300.0 and record["method"] == "fgr"
    assert record["fit_wall_s"] > 0 and record["train_step_s"] > 0 and set(record["eval_s"]) == {
        "flowpgd", "adef", "stadv", "rt"}
    assert len(record["val_acc_by_epoch"]) == 2
    featured = record["featured_accuracy"]
    assert set(featured) == {"clean", "flowpgd", "adef", "stadv", "rt", "worst case"}
    assert featured["worst case"] <= min(featured[k] for k in ("flowpgd", "adef", "stadv"))
    masks = record["evaluation"]["masks"]
    assert len(masks["clean"]) == 16 and "flowpgd@0.05" in masks and "adef@1" in masks
    assert record["attack_settings"]["flowpgd"]["steps"] == 20 and record["library_commit"]["commit"]
    text = (out / "frontier.md").read_text()
    assert "robustness frontiers" in text and "FGR above IGR" in text and "worst case >=" in text
    assert "paired test per seed" in text and "McNemar" in text and "## Protocol record" in text
    assert (out / "frontier.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "frontier.json").read_text())
    assert len(summary["points"]) == 6 and summary["claims"] and summary["claims_detail"]
    assert all(isinstance(p["attack_settings"], dict) for p in summary["points"])
    _check_record(out, "frontier.py", 1)
    models = sorted(p.stem for p in (out / "models").glob("*.pt"))  # slim copies of every point's best model
    assert models == sorted(p.stem for p in (out / "points").glob("*.json")) and models
    import torch

    kept = torch.load(out / "models" / f"{models[0]}.pt", map_location="cpu", weights_only=False)
    assert not [v for v in kept["config"].values() if isinstance(v, str) and v.startswith("/")]  # portable paths

    # evaluation cut short after three attacks: only the missing attack runs again
    (out / "points" / "fgr-lam300-s1.json").unlink()
    cache = out / "ckpt" / "fgr-lam300-s1" / "eval" / "paper"
    (cache / "rt.pt").unlink()
    kept = (cache / "adef.pt").stat().st_mtime_ns
    steps = (out / "ckpt" / "fgr-lam300-s1" / "log.jsonl").read_text().count('"event": "step"')
    _run("frontier.py", *args, cwd=tmp_path)
    assert (cache / "rt.pt").is_file() and (cache / "adef.pt").stat().st_mtime_ns == kept
    assert (out / "ckpt" / "fgr-lam300-s1" / "log.jsonl").read_text().count('"event": "step"') == steps
    again = json.loads((out / "points" / "fgr-lam300-s1.json").read_text())
    assert again["evaluation"]["rows"] == record["evaluation"]["rows"]
    _check_record(out, "frontier.py", 2)

    # a time limit that is already spent stops before the next point, with exit status 75
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(EXAMPLES / "frontier.py"), *args, "--stop-after-min", "0"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 75 and "--stop-after-min" in proc.stdout

    # another protocol in the same folder is refused (its caches belong to the first one)
    changed = [a if a != "16" else "32" for a in args]
    proc = subprocess.run([sys.executable, str(EXAMPLES / "frontier.py"), *changed], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0 and "eval_subset" in proc.stderr and "new --out-dir" in proc.stderr


def test_frontier_skips_a_point_another_process_holds(tmp_path):
    """Two processes may share one output folder: a point whose lock another process holds is
    skipped (exit 0, the report from what is finished), and taken up once the lock is free."""
    exclusive_lock = example_module("_common").exclusive_lock
    out = tmp_path / "fr"
    args = ["--dataset", "mnist-subset", "--methods", "standard", "fgr", "--seeds", "0", "--epochs", "1",
            "--max-steps-per-epoch", "2", "--val-size", "100", "--eval-subset", "8", "--attack-size", "small",
            "--no-progress", "--out-dir", str(out)]
    with exclusive_lock(out / "ckpt" / ".fgr-lam300-s0.lock", wait=False) as held:
        assert held
        text = _run("frontier.py", *args, cwd=tmp_path)
    assert "fgr-lam300-s0: another process is on it" in text
    assert sorted(p.name for p in (out / "points").glob("*.json")) == ["standard-s0.json"]
    assert not (out / "ckpt" / "fgr-lam300-s0" / "last.pt").exists()
    assert "other processes were on fgr-lam300-s0" in json.loads((out / "run.json").read_text())["status"]
    _run("frontier.py", *args, cwd=tmp_path)
    assert sorted(p.name for p in (out / "points").glob("*.json")) == ["fgr-lam300-s0.json", "standard-s0.json"]
    _check_record(out, "frontier.py", 2)
    assert json.loads((out / "run.json").read_text())["status"] == "finished"


def test_run_record_keeps_every_process_session(tmp_path, monkeypatch):
    """Records of processes sharing a folder each keep their own session; a save never drops
    another's, and the file is whole after every save."""
    RunRecord = example_module("_common").RunRecord
    monkeypatch.setattr(sys, "argv", ["frontier.py", "--out-dir", str(tmp_path)])
    first = RunRecord(tmp_path, 0, {"out_dir": str(tmp_path)})
    second = RunRecord(tmp_path, 0, {"out_dir": str(tmp_path)})
    first.save()
    first.finish(status="finished")
    record = json.loads((tmp_path / "run.json").read_text())
    assert [s["id"] for s in record["sessions"]] == [first.session["id"], second.session["id"]]
    assert record["sessions"][0]["finished_utc"] and record["sessions"][1]["finished_utc"] is None
    second.finish(status="stopped")
    record = json.loads((tmp_path / "run.json").read_text())
    assert len(record["sessions"]) == 2 and all(s["finished_utc"] for s in record["sessions"])
    assert record["wall_s_total"] == pytest.approx(sum(s["wall_s"] for s in record["sessions"]))
    assert str(tmp_path) not in (tmp_path / "run.json").read_text()
    assert not list(tmp_path.glob("*.tmp"))


def test_frontier_gap_at_equal_clean_accuracy():
    """The claims' measure: each challenger point against the best baseline point that is at
    least as accurate clean (within two standard errors on 10,000 images, 0.002 near 0.99)."""
    m = example_module("frontier")
    clean_tolerance, gap_at_equal_clean = m.clean_tolerance, m.gap_at_equal_clean
    assert clean_tolerance(0.99) == pytest.approx(0.00199, abs=1e-5)
    baseline = [(0.990, 0.2), (0.980, 0.6)]
    # 0.985: only (0.990, 0.2) is as accurate; 0.975: both are, the best is 0.6
    gap, compared = gap_at_equal_clean([(0.985, 0.5), (0.975, 0.5)], baseline)
    assert gap == pytest.approx(((0.5 - 0.2) + (0.5 - 0.6)) / 2) and compared == 2
    # within noise counts as equally accurate: 0.9885 vs 0.990 (tolerance ~0.002)
    gap, _ = gap_at_equal_clean([(0.9915, 0.5)], [(0.990, 0.2), (0.9905, 0.9)])
    assert gap == pytest.approx(0.5 - 0.9)
    # a challenger point more accurate than every baseline point is left out ...
    gap, compared = gap_at_equal_clean([(0.999, 0.3), (0.95, 0.9)], [(0.97, 0.4)])
    assert compared == 1 and gap == pytest.approx(0.9 - 0.4)
    # ... and when all are, the baseline's points are compared against the challenger's (sign flipped)
    assert gap_at_equal_clean([(0.999, 0.3)], [(0.95, 0.4)]) == (pytest.approx(-(0.4 - 0.3)), 1)
    # the shared standard point is skipped, and is no rival: a challenger point more accurate
    # than every baseline setting but the standard model is outside the baseline's range
    standard = (0.99, 0.2)
    assert gap_at_equal_clean([standard], [standard], skip=(standard,)) is None
    gap, compared = gap_at_equal_clean([(0.985, 0.6), (0.96, 0.7), standard], [(0.97, 0.65), standard],
                                       skip=(standard,))
    assert compared == 1 and gap == pytest.approx(0.7 - 0.65)


def test_frontier_flags_a_challenger_below_the_baselines_clean_range():
    """FGR+AT against FGR on MNIST: every challenger point is less accurate clean than every
    baseline point, so "above" there is a trade, and the verdict says so."""
    m = example_module("frontier")
    below_clean_range, judge_claims = m.below_clean_range, m.judge_claims
    standard = (0.99, 0.2)
    assert below_clean_range([(0.95, 0.6), standard], [(0.98, 0.3), (0.97, 0.35), standard], skip=(standard,))
    assert not below_clean_range([(0.97, 0.6)], [(0.98, 0.3), (0.97, 0.35)])  # overlaps
    assert not below_clean_range([(0.969, 0.6)], [(0.970, 0.3)])  # within noise of the baseline
    assert not below_clean_range([], [(0.97, 0.3)])

    points = [_masked_point(m, "fgr", 300, None, s, 0.98, 0, 300) for s in (0, 1)]
    points += [_masked_point(m, "fgr+at", 300, 0.05, s, 0.95, 0, 600) for s in (0, 1)]
    rows = {(r[0], r[1]): r[-1] for r in judge_claims(points, [0, 1], 1000)}
    assert rows[("FGR+AT above FGR", "flowpgd")] == "above; less accurate clean than every baseline point"


def test_train_step_seconds_ignores_a_slowed_epoch():
    """The cost measure: an epoch slowed fourfold (the process paused, another job on the cores)
    does not count as the method's cost; a run without timed epochs costs 0."""
    train_step_seconds = example_module("_common").train_step_seconds
    steady = [{"epoch": e, "images_per_s": 400.0} for e in range(1, 11)]
    assert train_step_seconds(steady, 40000) == pytest.approx(10 * 100.0)
    slowed = steady[:1] + [{"epoch": 2, "images_per_s": 100.0}] + steady[2:]
    assert train_step_seconds(slowed, 40000) == pytest.approx(10 * 100.0)
    assert train_step_seconds([{"epoch": 1}], 40000) == 0.0


def _masked_point(m, method, lam, at_eps, seed, clean, first, last, n=1000):
    """A synthetic frontier record whose model is correct, under every attack, on attacked images
    first..last-1 of n (clean on all of them), with the per-example masks the claims test."""
    featured = {"flowpgd": 0.05, "adef": 1.0, "stadv": 1.0, "rt": None}
    mask = "".join("1" if first <= i < last else "0" for i in range(n))
    keys = ["flowpgd@0.05", "adef@1", "stadv@1", "rt"]
    return {"tag": f"{method}-{lam}-{at_eps}-s{seed}", "method": method, "lam": lam, "at_eps": at_eps, "seed": seed,
            "test_acc_full_test_set": clean, "featured": featured,
            "featured_accuracy": {k: (last - first) / n for k in m.ATTACKS + (m.WORST,)},
            "evaluation": {"masks": {"clean": "1" * n, **{k: mask for k in keys}}}}


def test_frontier_mcnemar_exact_values():
    """The paired test of the claims: exact two-sided McNemar, binomial on the discordant pairs."""
    import math

    mcnemar_p = example_module("frontier").mcnemar_p
    assert mcnemar_p(0, 10) == 2 / 1024 and mcnemar_p(10, 0) == 2 / 1024
    assert mcnemar_p(1, 9) == 22 / 1024  # 2 * (C(10,0) + C(10,1)) / 2**10
    assert mcnemar_p(5, 5) == 1.0 and mcnemar_p(37, 37) == 1.0 and mcnemar_p(0, 0) == 1.0
    assert mcnemar_p(3, 4) == 1.0  # 2 * P(X <= 3 | n 7) = 1 exactly
    # thousands of pairs: no underflow or overflow, and it agrees with a log-space sum
    b, c = 430, 570
    logs = [math.lgamma(b + c + 1) - math.lgamma(i + 1) - math.lgamma(b + c - i + 1) - (b + c) * math.log(2)
            for i in range(b + 1)]
    top = max(logs)
    expected = 2 * math.exp(top) * sum(math.exp(v - top) for v in logs)
    assert mcnemar_p(b, c) == pytest.approx(expected, rel=1e-9) and 1e-5 < mcnemar_p(b, c) < 2e-5
    assert mcnemar_p(0, 3000) == 0.0  # below the smallest double, not an error
    for bad in ((-1, 2), (1.5, 2), (True, 2)):
        with pytest.raises(ValueError):
            mcnemar_p(*bad)


def test_frontier_small_consistent_paired_difference_is_above():
    """A gap of 0.02 (half the old 0.045 threshold) that every seed's paired test finds
    (p < 0.01, same sign) is 'above' and labelled 'small'; the same gap with one seed's test
    short of 0.01 is 'no clear difference'. The per-seed counts and p appear in the row."""
    m = example_module("frontier")

    def curves(fgr_lo, fgr_extra, seed):
        # IGR correct on [0, 300) and [0, 400); FGR shifted: loses fgr_lo images, wins fgr_extra
        return [_masked_point(m, "igr", 1e4, None, seed, 0.990, 0, 300),
                _masked_point(m, "igr", 1e5, None, seed, 0.985, 0, 400),
                _masked_point(m, "fgr", 300, None, seed, 0.990, fgr_lo, 300 + fgr_extra),
                _masked_point(m, "fgr", 3000, None, seed, 0.985, fgr_lo, 400 + fgr_extra)]

    points = curves(10, 30, 0) + curves(10, 30, 1)  # 30:10 per comparison, gap +0.02
    rows = {(r[0], r[1]): r for r in m.judge_claims(points, [0, 1], 1000)}
    row = rows[("FGR above IGR at equal clean accuracy", "flowpgd")]
    assert row[2] == "+0.020 (2 points)" and row[3] == "+0.020, +0.020"
    assert row[4].startswith("s0: 60:10, p ") and row[5] == "small" and row[6] == "above"
    assert m.mcnemar_p(60, 10) < m.ALPHA and 0.02 < m.LARGE
    detail = m.judge(points, [0, 1])[0]["seeds"][0]["comparisons"][0]
    assert (detail["ahead"], detail["behind"]) == (30, 10) and detail["p"] == m.mcnemar_p(30, 10)
    # the old threshold rule would not have called it: 0.02 < 0.045
    weak = curves(10, 30, 0) + curves(4, 8, 1)  # seed 1: 8:4 per comparison, 16:4 images, p 0.012
    judged = {(r["claim"], r["attack"]): r for r in m.judge(weak, [0, 1])}
    seed1 = judged[("FGR above IGR at equal clean accuracy", "flowpgd")]["seeds"][1]
    assert seed1["p"] >= m.ALPHA and seed1["gap"] > 0
    assert judged[("FGR above IGR at equal clean accuracy", "flowpgd")]["verdict"] == "no clear difference"
    # seeds that disagree in sign are no verdict either, however small their p
    flipped = curves(10, 30, 0) + [dict(r, method={"fgr": "igr", "igr": "fgr"}[r["method"]]) for r in curves(10, 30, 1)]
    judged = {(r["claim"], r["attack"]): r for r in m.judge(flipped, [0, 1])}
    assert judged[("FGR above IGR at equal clean accuracy", "flowpgd")]["verdict"].startswith("no clear difference")
    # points without masks (written without them) are reported, not tested
    bare = [{k: v for k, v in r.items() if k != "evaluation"} for r in points]
    row = {(r[0], r[1]): r for r in m.judge_claims(bare, [0, 1])}[("FGR above IGR at equal clean accuracy", "flowpgd")]
    assert row[-1] == "not tested (per-example masks missing)" and row[4] == "s0: -; s1: -"


def test_frontier_point_records_attack_settings_and_commit(tmp_path, monkeypatch):
    """A point written by the frontier runner carries every attack's settings
    (``FlowAttack.settings()``) and budgets and the library commit, from the evaluation's protocol;
    its evaluation resumes attack by attack from ``evaluate``'s cache: a missing attack is attacked
    again, one whose budgets changed too, the others are read back. No training: an untrained tiny
    CNN stands in for the trained model."""
    import subprocess
    import types

    import torch

    m = example_module("frontier")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(2 * 28 * 28, 10)).eval()
    images = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        labels = model(images).argmax(1)
    trainer = types.SimpleNamespace(cfg=None, ctx=types.SimpleNamespace(device=torch.device("cpu")))
    result = types.SimpleNamespace(status="finished", best_val_acc=0.5, best_epoch=1, test_acc=0.5,
                                   history=[{"val_acc": 0.5, "images_per_s": 100.0}])

    class Train(list):
        num_classes = 10
    data = types.SimpleNamespace(train=Train(range(50)))
    monkeypatch.setattr(m, "train_point", lambda *a: (trainer, result, {"fit_wall_s": 1.0, "fit_sessions": 1}))
    monkeypatch.setattr(m, "load_best", lambda t: model)
    monkeypatch.setattr(m, "eval_batch", lambda cfg, data, count, device: (images, labels))
    monkeypatch.setattr(m, "save_model", lambda trainer, path: None)
    argv = ["--dataset", "mnist-subset", "--attack-size", "small", "--eval-subset", "3", "--no-progress",
            "--pgd-budgets", "0.05", "--tnorm-budgets", "1.0", "--out-dir", str(tmp_path)]
    args = m.parse_args(argv)
    point = ("fgr", 300.0, None, 0)
    record = m.run_point(args, data, tmp_path, point, {})
    saved = json.loads((tmp_path / "points" / "fgr-lam300-s0.json").read_text())
    assert saved["attack_settings"] == record["attack_settings"]
    settings = saved["attack_settings"]
    assert set(settings) == {"flowpgd", "adef", "stadv", "rt"}
    pgd = settings["flowpgd"]
    assert pgd["class"] == "FlowPGD" and pgd["budgets"] == [0.05]
    assert pgd["steps"] == 20 and pgd["units"] == "normalized"
    assert {"eps", "loss", "restarts", "random_start", "padding_mode"} <= set(pgd)
    assert settings["adef"]["candidates"] == [1, 2, 3] and settings["adef"]["budgets"] == [1.0]
    assert settings["rt"]["budgets"] == [] and settings["rt"]["num_translations"] == 3
    assert settings["stadv"]["class"] == "StAdv" and "search_steps" in settings["stadv"]
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    expected = head.stdout.strip() if head.returncode == 0 and head.stdout.strip() else "unknown"
    assert saved["library_commit"]["commit"] == expected == pgd["commit"]
    assert saved["library_commit"]["uncommitted_changes"] in (True, False, "unknown")
    assert set(saved["eval_s"]) == set(settings)

    # rt's outcome lost, FlowPGD asked at one more budget: those two are attacked again, ADef and
    # stAdv read back
    (tmp_path / "points" / "fgr-lam300-s0.json").unlink()
    cache = tmp_path / "ckpt" / "fgr-lam300-s0" / "eval" / "paper"
    assert sorted(p.name for p in cache.glob("*.pt")) == ["adef.pt", "flowpgd.pt", "rt.pt", "stadv.pt"]
    (cache / "rt.pt").unlink()
    kept = {name: (cache / f"{name}.pt").stat().st_mtime_ns for name in ("adef", "stadv", "flowpgd")}
    args = m.parse_args([*argv, "--pgd-budgets", "0.05", "0.1"])
    again = m.run_point(args, data, tmp_path, point, {})
    assert (cache / "rt.pt").is_file() and (cache / "flowpgd.pt").stat().st_mtime_ns != kept["flowpgd"]
    assert all((cache / f"{name}.pt").stat().st_mtime_ns == kept[name] for name in ("adef", "stadv"))
    assert again["attack_settings"]["flowpgd"]["budgets"] == [0.05, 0.1]
    assert again["attack_settings"]["adef"] == settings["adef"]
    assert ("flowpgd", 0.1) in {(r["attack"], r["budget"]) for r in again["evaluation"]["rows"]}

    # the report's protocol section: a point without the record next to one with it
    old = {k: v for k, v in again.items() if k not in ("attack_settings", "library_commit")}
    text = m.protocol_text([old, record])
    assert "recorded for 1 of 2 points (not recorded for the other 1" in text and expected in text
    assert "not recorded for all 1 points" in m.protocol_text([old])


def test_frontier_rejudge_plan_defaults_to_the_standard_preset_and_checks_before_recording(tmp_path):
    """--plan rejudge runs under the standard preset unless told otherwise; a plan its preset
    cannot report (worst-case rows under 'paper') is refused before settings.json is written, so
    the corrected command is not refused as 'other settings'."""
    m = example_module("frontier")
    assert m.parse_args(["--plan", "rejudge"]).preset == "standard"
    assert m.parse_args([]).preset == "paper"
    bad = m.parse_args(["--plan", "rejudge", "--preset", "paper"])
    with pytest.raises(SystemExit, match="--preset standard"):
        m.check_settings(bad, tmp_path)
    assert not (tmp_path / "settings.json").exists()
    m.check_settings(m.parse_args(["--plan", "rejudge"]), tmp_path)
    assert json.loads((tmp_path / "settings.json").read_text())["preset"] == "standard"


def test_frontier_attacks_a_point_of_an_older_preset_version_again_without_retraining(tmp_path):
    """A finished point attacked under an older version of the folder's preset is attacked again on
    its kept model (models/<tag>.pt): training results kept, the old summary under
    'earlier_protocols', the new version recorded."""
    out = tmp_path / "fr"
    args = ["--dataset", "mnist-subset", "--plan", "rejudge", "--preset", "fast", "--methods", "standard",
            "--seeds", "0", "--epochs", "1", "--milestones", "--max-steps-per-epoch", "2", "--val-size", "100",
            "--eval-subset", "8", "--no-progress", "--out-dir", str(out)]
    _run("frontier.py", *args, cwd=tmp_path)
    path = out / "points" / "standard-s0.json"
    first = json.loads(path.read_text())
    assert first["preset"] == {"name": "fast", "version": 1} and (out / "models" / "standard-s0.pt").is_file()
    first["preset"]["version"] = 0  # as if attacked under an earlier version of the preset
    path.write_text(json.dumps(first))
    sessions = (out / "ckpt" / "standard-s0" / "fit_sessions.json").read_text()
    text = _run("frontier.py", *args, cwd=tmp_path)
    assert "attacking its kept model again" in text
    again = json.loads(path.read_text())
    assert again["preset"] == {"name": "fast", "version": 1}
    assert again["earlier_protocols"][0]["preset"]["version"] == 0
    assert again["fit_wall_s"] == first["fit_wall_s"]
    assert again["test_acc_full_test_set"] == first["test_acc_full_test_set"]
    assert (out / "ckpt" / "standard-s0" / "fit_sessions.json").read_text() == sessions  # not trained again
    assert again["evaluation"]["masks"]["clean"] == first["evaluation"]["masks"]["clean"]
