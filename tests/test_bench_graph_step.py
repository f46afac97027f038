"""benchmarks/bench_graph_step.py on a CPU: argument handling and the result schema (the graphed
columns need CUDA and say so)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def bench(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_graph_step

    threads = torch.get_num_threads()
    yield bench_graph_step
    torch.set_num_threads(threads)
    sys.modules.pop("bench_graph_step", None)


def test_cpu_run_writes_eager_times_and_says_why_no_graph(bench, tmp_path):
    path = bench.main(["--device", "cpu", "--quick", "--steps", "1", "--warmup", "0", "--threads", "1",
                       "--workloads", "mnist-cnn", "--methods", "standard", "fgr", "igr", "--name", "g",
                       "--out-dir", str(tmp_path)])
    assert path == tmp_path / "g.json"
    result = json.loads(path.read_text())
    assert result["environment"]["device_type"] == "cpu"
    rows = {row["method"]: row for row in result["rows"]}
    assert set(rows) == {"standard", "fgr", "igr"}
    for row in rows.values():
        assert row["workload"] == "mnist-cnn" and row["batch"] == 16 and row["eager_ms"] > 0
        assert "needs CUDA" in row["graph_error"] and "graph_ms" not in row
    assert rows["fgr"]["fgr_over_igr_eager"] == pytest.approx(rows["fgr"]["eager_ms"] / rows["igr"]["eager_ms"])
    assert (tmp_path / "g.csv").is_file()


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--methods", "adversarial"], "invalid choice"),
    (["--device", "cuda:0"], "CUDA is not available"),
])
def test_bad_arguments_are_usage_errors(bench, capsys, argv, message):
    if "cuda" in " ".join(argv) and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(SystemExit) as info:
        bench.parse_args(["--device", "cpu", *argv] if "--device" not in argv else argv)
    assert info.value.code == 2 and message in capsys.readouterr().err
