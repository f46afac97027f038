"""bench_warp.py and bench_fgr.py on a CPU: argument handling, the device-time mode refused with a
clear message, and the schema of what they write (tiny shapes; the numbers themselves are the
scripts' business, not a test's). benchmarks/results/: its layout, its index, and the scripts'
default output folders."""

import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "benchmarks"
RESULTS = BENCH / "results"
RESULT_FOLDERS = ("cpu", "cuda", "compile", "logs")


def _load(name):
    sys.path.insert(0, str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}_under_test", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def bench_warp():
    return _load("bench_warp")


@pytest.fixture(scope="module")
def bench_fgr():
    return _load("bench_fgr")


def test_bench_warp_on_cpu_writes_host_times_and_skips_device_time(bench_warp, tmp_path, capsys):
    rc = bench_warp.main(["--device", "cpu", "--shapes", "2x1x6x5", "--flows", "iid", "smooth", "--paddings", "zeros",
                          "border", "--repeats", "1", "--out", "t", "--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 0 and "device time: skipped (needs CUDA)" in out
    result = json.loads((tmp_path / "t.json").read_text())
    assert (tmp_path / "t.csv").exists()
    env, rows = result["environment"], result["rows"]
    assert env["timing"] == "both" and env["device_type"] == "cpu" and "torch" in env and "triton" in env
    assert {(r["flow"], r["padding"], r["impl"], r["case"]) for r in rows} == {
        (f, p, i, c) for f in ("iid", "smooth") for p in ("zeros", "border")
        for i in ("flowtriton[torch]", "grid_sample") for c in bench_warp.CASES}
    for r in rows:
        assert r["shape"] == "2x1x6x5" and r["eager_ms"] > 0 and r["enqueue_us"] > 0
        assert r.get("device_ms") is None and "gbps" not in r
        assert r["time_vs_ours_clock"] == "eager_ms"
    ours = [r for r in rows if r["impl"] == "flowtriton[torch]"]
    assert all(r["time_vs_ours"] == pytest.approx(1.0) for r in ours)
    grads = {(r["impl"], r["case"], r["padding"]): r["grads"] for r in rows}
    assert grads[("grid_sample", "fwd+bwd(flow)", "zeros")] == "flow"  # no cuDNN on a CPU
    assert grads[("grid_sample", "fwd+bwd(both)", "zeros")] == "flow+image"
    assert bench_warp.grads_computed("grid_sample", "fwd+bwd(flow)", "zeros", "cuda").startswith("flow+image")


def test_bench_warp_refuses_device_time_without_cuda_and_bad_shapes(bench_warp, tmp_path, capsys):
    assert bench_warp.main(["--device", "cpu", "--timing", "device", "--out-dir", str(tmp_path)]) == 2
    assert "--timing device needs a CUDA device" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())
    for bad in ("2x3x4", "2x0x4x4", "axbxcxd"):
        with pytest.raises(SystemExit):
            bench_warp.main(["--device", "cpu", "--shapes", bad])
    with pytest.raises(SystemExit):
        bench_warp.main(["--device", "cpu", "--flows", "wavy"])


def test_bench_warp_grid_sample_baseline_is_the_same_warp(bench_warp):
    """The cached-grid grid_sample baseline warps by the same displacement as flowtriton."""
    gen = torch.Generator().manual_seed(0)
    image = torch.rand(2, 3, 6, 5, generator=gen, dtype=torch.float64)
    for kind in ("iid", "smooth"):
        flow = bench_warp.make_flow(kind, 2, 6, 5, gen).double()
        warp = bench_warp.GridSampleWarp()
        got = warp(image, bench_warp.pixels_to_offset(flow), "border")
        assert warp(image, bench_warp.pixels_to_offset(flow), "border").shape == got.shape and len(warp._base) == 1
        import flowtriton

        torch.testing.assert_close(got, flowtriton.warp(image, flow, "border", backend="torch"), atol=1e-9, rtol=1e-9)
    smooth = bench_warp.make_flow("smooth", 1, 32, 32, gen)
    assert smooth.abs().max() <= 3.0 + 1e-4 and (smooth[..., 1:] - smooth[..., :-1]).abs().max() < 1.0


def test_bench_warp_bytes_and_roofline(bench_warp):
    sys.path.insert(0, str(BENCH))
    from common import hbm_peak_gbps

    assert bench_warp.min_bytes("fwd", (1, 3, 2, 2)) == 4 * (2 * 12 + 8)
    assert bench_warp.min_bytes("fwd+bwd(flow)", (1, 3, 2, 2)) == 4 * (4 * 12 + 3 * 8)
    assert bench_warp.min_bytes("dbl(jvp)", (1, 3, 2, 2)) is None
    assert hbm_peak_gbps("NVIDIA H100 80GB HBM3") == 3350.0 and hbm_peak_gbps("NVIDIA H200") == 4800.0
    assert hbm_peak_gbps("NVIDIA H100 PCIe") == 2000.0 and hbm_peak_gbps("x86_64") is None


def test_bench_fgr_penalty_table_on_cpu(bench_fgr, tmp_path, capsys):
    rc = bench_fgr.main(["--device", "cpu", "--skip-steps", "--penalty-shapes", "2x1x8x8", "3x3x5x7",
                         "--repeats", "1", "--out-dir", str(tmp_path), "--threads", str(torch.get_num_threads())])
    out = capsys.readouterr().out
    assert rc == 0 and "device time: skipped (needs CUDA)" in out
    result = json.loads((tmp_path / "fgr_cpu_penalty_only.json").read_text())
    assert result["training_step"] == [] and result["meta"]["timing"] == "both"
    rows = result["penalty_isolated"]
    assert [(r["workload"], r["variant"]) for r in rows] == [("2x1x8x8", "eager"), ("3x3x5x7", "eager")]
    for r in rows:
        assert r["fwd_bwd_ms"] > 0 and r["enqueue_us"] > 0 and r.get("device_ms") is None
        assert r["speedup_clock"] == "fwd_bwd_ms" and r["speedup_vs_eager"] == pytest.approx(1.0)
    assert bench_fgr.penalty_bytes((2, 3, 4, 5)) == 5 * 120 * 4


def test_bench_fgr_refuses_device_time_without_cuda_and_bad_arguments(bench_fgr, tmp_path, capsys):
    assert bench_fgr.main(["--device", "cpu", "--timing", "device", "--out-dir", str(tmp_path)]) == 2
    assert "--timing device needs a CUDA device" in capsys.readouterr().out
    for bad in (["--penalty-shapes", "4x4"], ["--repeats", "0", "--skip-steps"], ["--timing", "gpu"]):
        with pytest.raises(SystemExit):
            bench_fgr.main(["--device", "cpu", "--out-dir", str(tmp_path), *bad])


def test_gpu_suite_is_valid_bash_and_its_lease_runs_every_gpu_figure(bench_warp, bench_fgr, capsys):
    import shutil
    import subprocess

    suite = BENCH / "gpu_suite.sh"
    if shutil.which("bash"):
        proc = subprocess.run(["bash", "-n", str(suite)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr
    text = suite.read_text()
    lease = text[text.index("lease() {"):text.index("reproduce() {")]
    for script in ("bench_host_overhead.py --device cuda",
                   "bench_warp.py --device cuda --quick --paddings zeros border",
                   "bench_fgr.py --device cuda --skip-steps --repeats 5", "bench_graph_step.py --device cuda",
                   "tests/test_eager_path.py", "count_step_ops.py", "${LEASE_S:-480}"):
        assert script in lease, script
    if not torch.cuda.is_available():  # the lease's arguments parse; without a GPU the scripts say so
        assert bench_warp.main(["--device", "cuda", "--quick", "--paddings", "zeros", "border"]) == 2
        assert bench_fgr.main(["--device", "cuda", "--skip-steps", "--repeats", "5", "--replays", "10"]) == 2
        assert capsys.readouterr().out.count("no CUDA device is visible") == 2


def test_results_hold_the_index_and_four_folders_and_the_index_lists_every_file():
    """benchmarks/results/: README.md (the index) and cpu/, cuda/, compile/, logs/, nothing else at
    the top; every file below is named in the index (as `folder/name`), and every such name exists."""
    top = {path.name: path for path in RESULTS.iterdir()}
    assert set(top) == {"README.md", *RESULT_FOLDERS}, sorted(top)
    assert top["README.md"].is_file() and all(top[name].is_dir() for name in RESULT_FOLDERS)
    index = top["README.md"].read_text(encoding="utf-8")
    files = sorted(path.relative_to(RESULTS).as_posix() for name in RESULT_FOLDERS
                   for path in top[name].rglob("*") if path.is_file())
    assert files, "no result files"
    unlisted = [name for name in files if f"`{name}`" not in index]
    assert not unlisted, f"benchmarks/results/README.md does not list {unlisted}"
    named = set(re.findall(r"`((?:%s)/[\w.-]+)`" % "|".join(RESULT_FOLDERS), index))
    assert named, "the index names no files"
    assert not named - set(files), f"the index names missing files: {sorted(named - set(files))}"


def test_writers_default_to_the_device_folder(bench_warp, bench_fgr, tmp_path, monkeypatch, capsys):
    """With no --out-dir the scripts write to benchmarks/results/<device type>/ and say where."""
    common = bench_warp.results_dir.__globals__  # the benchmarks' common module, as the scripts see it
    assert common["results_dir"](torch.device("cpu")) == RESULTS / "cpu"
    assert common["results_dir"]("cuda:1") == RESULTS / "cuda" == common["results_dir"](torch.device("cuda"))
    with pytest.raises(ValueError, match="no results folder"):
        common["results_dir"]("meta")
    monkeypatch.setitem(common, "RESULTS", tmp_path)  # keep the committed results untouched
    assert bench_warp.main(["--device", "cpu", "--shapes", "2x1x6x5", "--flows", "iid", "--paddings", "zeros",
                            "--cases", "fwd", "--repeats", "1"]) == 0
    assert {p.name for p in (tmp_path / "cpu").iterdir()} == {"warp_cpu.json", "warp_cpu.csv"}
    assert f"wrote {tmp_path / 'cpu' / 'warp_cpu.json'}" in capsys.readouterr().out
    assert bench_fgr.main(["--device", "cpu", "--skip-steps", "--penalty-shapes", "2x1x8x8", "--repeats", "1",
                           "--threads", str(torch.get_num_threads())]) == 0
    assert (tmp_path / "cpu" / "fgr_cpu_penalty_only_penalty.csv").exists()
    assert f"wrote {tmp_path / 'cpu' / 'fgr_cpu_penalty_only.json'}" in capsys.readouterr().out
    graph_step = _load("bench_graph_step")
    path = graph_step.main(["--device", "cpu", "--quick", "--workloads", "mnist-cnn", "--methods", "standard",
                            "--steps", "1", "--warmup", "0"])
    assert path == tmp_path / "cpu" / "graph_step_cpu_quick.json" and path.exists()
    assert common["shown"](RESULTS / "cuda" / "x.json") == "benchmarks/results/cuda/x.json"
    host = (BENCH / "bench_host_overhead.py").read_text()
    assert 'RESULTS / args.device / f"host_overhead_{args.device}.json"' in host
