"""Concurrent invocations: two `cl-harness run` of one grid share it through run-folder locks (every run trained once,
every step logged once), and concurrent first writers of a fresh SQLite store take turns creating it."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from conftest import write_demo_stream, write_experiment

TESTS = Path(__file__).resolve().parent


def env() -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), "HF_HUB_OFFLINE": "1"}


def start(experiment: Path, uri: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "cl_harness", "run", str(experiment), "--tracking-uri", uri, "--no-progress"],
        cwd=cwd, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for(pattern: str, root: Path, count: int = 1, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len(list(root.rglob(pattern))) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"{count} x {pattern} did not appear under {root}")


@pytest.mark.slow
def test_two_concurrent_invocations_of_one_grid_train_every_run_once(tmp_path, tiny_bert, monkeypatch, capsys):
    """The first process is held inside its first run; the second, started then (in this process), leaves that run to
    it and trains another; both then finish the grid. Every child run exists once, FINISHED, with steps 0, 1, 2 logged once each."""
    from mlflow import MlflowClient

    from cl_harness.cli import main

    flag = tmp_path / "hold"
    flag.touch()
    hold = {"cl_test_plugins:PauseBeforeTask": {"flag_file": str(flag), "seconds": 900}}  # released by the flag, not the clock
    write_demo_stream(tmp_path, per_class=8)
    strategies = [{"name": "naive", "plugins": ["naive", hold]}, {"name": "naive-2", "plugins": ["naive", hold]}]
    experiment = write_experiment(tmp_path, tiny_bert, strategies)
    config = yaml.safe_load(experiment.read_text())
    config["seeds"] = [0, 1]
    experiment.write_text(yaml.safe_dump(config, sort_keys=False))
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    first = start(experiment, uri, tmp_path)
    wait_for("checkpoint.pt", tmp_path / "runs")  # the first process holds run 1, paused before its task 2

    def release_once_both_hold_a_run() -> None:
        wait_for("checkpoint.pt", tmp_path / "runs", count=2)
        flag.unlink()

    releaser = threading.Thread(target=release_once_both_hold_a_run, daemon=True)
    releaser.start()
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(TESTS))
    # The second invocation runs in this process (one interpreter fewer to start), concurrently with the first.
    code = main(["run", str(experiment), "--tracking-uri", uri, "--no-progress"])
    second = capsys.readouterr()
    outputs = [first.communicate(timeout=600), (second.out, second.err)]

    assert first.returncode == 0 and code == 0, outputs[0][1][-3000:] + second.err[-3000:]
    assert all("Traceback" not in err for _, err in outputs)
    assert "another process is training this run" in second.err

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    children = [r for r in runs if r.data.tags.get("cl_harness.role") == "child"]
    parents = [r for r in runs if r.data.tags.get("cl_harness.role") == "parent"]
    assert len(parents) == 1
    assert sorted(r.info.run_name for r in children) == sorted(
        f"{s}/seed{k}/order0" for s in ("naive", "naive-2") for k in (0, 1)
    )
    assert {r.info.status for r in runs} == {"FINISHED"}
    for child in children:
        steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "acc/seen_avg"))
        assert steps == [0, 1, 2], (child.info.run_name, steps)
        assert len(client.get_metric_history(child.info.run_id, "train_time_s")) == 2  # each task trained once
    trained = [out.count("FINISHED in") for out, _ in outputs]  # a run found finished prints no time
    skipped = [out.count("already finished") for out, _ in outputs]
    assert sum(trained) == 4 and all(trained) and [t + s for t, s in zip(trained, skipped)] == [4, 4], outputs


PROBE = """
import sys
from pathlib import Path
from mlflow import MlflowClient
from cl_harness.tracking.store import get_or_create_experiment
from cl_harness.tracking.store_guard import store_creation_lock
db = Path(sys.argv[1])
with store_creation_lock(db):
    experiment_id = get_or_create_experiment(MlflowClient(tracking_uri=f"sqlite:///{db}"), "shared")
print(experiment_id)
"""


@pytest.mark.slow
def test_concurrent_first_writers_of_a_fresh_store_take_turns(tmp_path):
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    processes = [
        subprocess.Popen([sys.executable, "-c", PROBE, str(db)], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (_out, err) in zip(processes, outputs):
        assert process.returncode == 0, err[-3000:]
    assert len({out.strip() for out, _ in outputs}) == 1  # one experiment, found by all
    with sqlite3.connect(db) as connection:
        assert connection.execute("select count(*) from experiments where name = 'shared'").fetchone()[0] == 1
