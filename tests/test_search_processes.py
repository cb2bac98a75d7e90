"""A search in real processes: resumed after SIGKILL with the configured trial count, and trials in N workers at once."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from test_search import experiment_with_search

from cl_harness.cli import main

TESTS = Path(__file__).resolve().parent
LR = {"training.lr": {"low": 1e-4, "high": 1e-2, "log": True}}


def study_states(folder: Path, label: str) -> list[str]:
    study = optuna.load_study(study_name=label, storage=f"sqlite:///{folder / 'search.db'}")
    return sorted(t.state.name for t in study.trials)


def wait_for_a_reported_running_trial(runs: Path, process: subprocess.Popen, timeout: float = 240.0) -> Path:
    """The search folder once its study holds a RUNNING trial that reported a step (so it is mid-training)."""
    query = ("select count(*) from trials t join trial_intermediate_values v on v.trial_id = t.trial_id"
             " where t.state = 'RUNNING'")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        for db in runs.glob("*/search-*/search.db"):
            try:
                with sqlite3.connect(db, timeout=5) as connection:
                    if connection.execute(query).fetchone()[0]:
                        return db.parent
            except sqlite3.OperationalError:  # the tables are not created yet
                pass
        time.sleep(0.1)
    raise AssertionError(f"no trial reported a step (exit code {process.poll()}): {process.stderr.read() if process.stderr else ''}")


@pytest.mark.slow
def test_a_search_killed_mid_trial_resumes_to_the_configured_trial_count(tmp_path, tiny_bert, monkeypatch, capsys):
    from mlflow import MlflowClient

    flag = tmp_path / "pause"
    flag.touch()
    pause = {"cl_test_plugins:PauseBeforeTask": {"flag_file": str(flag), "seconds": 120}}  # released by the flag
    path = experiment_with_search(tmp_path, tiny_bert, {"n_trials": 2, "pruner": "none", "spaces": {"naive": LR}},
                                  strategies=[{"name": "naive", "plugins": ["naive", pause]}])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    command = ["run", str(path), "--tracking-uri", uri, "--no-progress", "--search-only"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "cl_harness", *command], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        folder = wait_for_a_reported_running_trial(tmp_path / "runs", process)  # trial 0, paused before its task 2
    finally:
        process.send_signal(signal.SIGKILL)
        process.communicate(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert study_states(folder, "naive") == ["RUNNING"]
    flag.unlink()

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(TESTS))
    assert main(command) == 0  # the same command, in this process (one interpreter fewer to start)
    assert "search naive: best valid_acc" in capsys.readouterr().out
    assert study_states(folder, "naive") == ["COMPLETE", "COMPLETE", "FAIL"]
    assert yaml.safe_load((folder / "best_params.yaml").read_text())["naive"]["complete_trials"] == 2

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert "RUNNING" not in {r.info.status for r in runs}
    trials = {r.info.run_name: r for r in runs if r.data.tags.get("cl_harness.role") == "trial"}
    assert {name: r.info.status for name, r in trials.items()} == {
        "naive/trial0/seed0": "FAILED", "naive/trial1/seed0": "FINISHED", "naive/trial2/seed0": "FINISHED"}
    assert "killed during this trial" in trials["naive/trial0/seed0"].data.tags["error"]
    (parent,) = [r for r in runs if r.data.tags.get("cl_harness.role") == "search"]
    assert parent.info.status == "FINISHED" and "best_params.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def two_strategy_search(tmp_path: Path, tiny_bert) -> tuple[Path, Path, str]:
    """naive and ewc, 2 trials each, every trained run recording its process id: (experiment, pid file, store URI)."""
    pids = tmp_path / "pids"
    record = {"cl_test_plugins:RecordProcess": {"pid_file": str(pids)}}
    strategies = [{"name": "naive", "plugins": ["naive", record]}, {"name": "ewc", "plugins": ["ewc", record]}]
    spaces = {"naive": LR, "ewc": {"ewc.ewc_lambda": {"low": 10, "high": 1e4, "log": True}}}
    path = experiment_with_search(tmp_path, tiny_bert, {"n_trials": 2, "pruner": "none", "spaces": spaces}, strategies=strategies)
    return path, pids, f"sqlite:///{tmp_path}/mlflow.db"


def check_trained_in_two_other_processes(tmp_path: Path, pids: Path, uri: str) -> None:
    """Each study ended with 2 complete trials, all 4 trained in 2 processes other than this one, all FINISHED."""
    from mlflow import MlflowClient

    (folder,) = (tmp_path / "runs").glob("*/search-*")
    assert study_states(folder, "naive") == study_states(folder, "ewc") == ["COMPLETE", "COMPLETE"]
    trainers = pids.read_text().split()
    assert len(trainers) == 4 and len(set(trainers)) == 2 and str(os.getpid()) not in trainers
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(r.info.run_name for r in runs if r.data.tags.get("cl_harness.role") == "trial") == [
        f"{label}/trial{n}/seed0" for label in ("ewc", "naive") for n in (0, 1)]


@pytest.mark.slow
def test_two_workers_share_each_strategys_study(tmp_path, tiny_bert, capsys):
    """2 strategies x 2 trials in 2 worker processes: each study ends with 2 complete trials, all trained in the workers."""
    path, pids, uri = two_strategy_search(tmp_path, tiny_bert)
    assert main(["run", str(path), "--tracking-uri", uri, "--no-progress", "--workers", "2", "--search-only"]) == 0
    assert "stopped with exit code" not in capsys.readouterr().err
    check_trained_in_two_other_processes(tmp_path, pids, uri)


@pytest.mark.slow
@pytest.mark.parametrize("verbose", [False, True])
def test_library_log_lines_show_only_with_verbose(tmp_path, tiny_bert, verbose):
    """MLflow's new-store lines and Optuna's new-study line are off unless ``--verbose``."""
    search = {"n_trials": 1, "spaces": {"naive": {"training.lr": {"low": 1e-4, "high": 1e-3, "log": True}}}}
    path = experiment_with_search(tmp_path, tiny_bert, search, strategies=("naive",))
    command = [sys.executable, "-m", "cl_harness.cli", *(["--verbose"] if verbose else []), "run", str(path),
               "--tracking-uri", f"sqlite:///{tmp_path}/store/mlflow.db", "--no-progress", "--search-only"]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_LOGGING_LEVEL"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    noise = ["Creating initial MLflow database tables", "A new study created in RDB"]
    assert [line for line in noise if line in done.stderr] == (noise if verbose else [])
    assert "search naive: best valid_acc" in done.stdout
