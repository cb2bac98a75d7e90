"""The prepared GPU check and the grid benchmark, exercised on the CPU through their dry runs."""

from __future__ import annotations

import importlib.util
import subprocess

import pytest

from conftest import REPO


@pytest.mark.slow
def test_gpu_check_dry_run_validates_and_plans_every_step(benchmark_dir):
    done = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry-run", "--data-root", str(benchmark_dir)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for precision in ("fp32", "bf16", "fp16"):
        assert f"--precision {precision}" in out
    assert "would run" in out and "benchmarks/grid.py" in out
    assert "10 runs" in out  # the grid validated: 5 strategies x 2 seeds
    assert "cl-harness evaluator, bf16" in out and "precision fp32" in out  # the tiny CPU throughput pass ran to its end


def test_gpu_check_refuses_unknown_arguments_and_missing_data(tmp_path):
    unknown = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--fast"], cwd=REPO, capture_output=True, text=True)
    assert unknown.returncode == 2 and "unknown argument '--fast'" in unknown.stderr
    missing = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--dry-run", "--data-root", str(tmp_path)], cwd=REPO,
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_grid_benchmark_writes_the_same_grid_for_both_sides(tmp_path, benchmark_dir):
    import yaml

    spec = importlib.util.spec_from_file_location("grid_benchmark", REPO / "benchmarks" / "grid.py")
    grid = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(grid)
    args = grid.parse_args(["--data-root", str(benchmark_dir), "--strategies", "naive", "replay", "--seeds", "0", "3"])
    experiment = yaml.safe_load(grid.write_experiment(tmp_path, args).read_text())
    assert experiment["strategies"] == ["naive", {"replay": grid.STRATEGY_PARAMS["replay"]}]
    assert experiment["seeds"] == [0, 3]
    stream = yaml.safe_load((tmp_path / "stream.yaml").read_text())
    assert [task["classes"] for task in stream["tasks"]] == grid.CLASS_PAIRS
