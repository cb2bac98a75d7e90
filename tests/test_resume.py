"""Nothing lost: a killed or interrupted run resumes from its last task and ends as an uninterrupted one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import write_demo_stream, write_experiment
from generative_helpers import write_generative_experiment

from cl_harness.cli import main
from cl_harness.tracking import schema

TESTS = Path(__file__).resolve().parent


def make_experiment(tmp_path, backbone, name: str, plugins: list, kind: str = "encoder") -> Path:
    strategies = [{"name": "naive", "plugins": ["naive", *plugins]}]
    if kind == "encoder":
        write_demo_stream(tmp_path, "class_incremental", per_class=24, tasks=3)
        path = write_experiment(tmp_path, backbone, strategies, epochs=2, probe=True)
    else:  # a language model on a task-incremental stream, through the same loop
        path = write_generative_experiment(tmp_path, backbone, kind, strategies, tasks=3, scenario="task_incremental",
                                           epochs=2, batch_size=4, lr=3e-3, probe=True)
    config = yaml.safe_load(path.read_text())
    config["name"] = name
    out = tmp_path / f"{name}.yaml"
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def start(experiment: Path, uri: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "cl_harness", "run", str(experiment), "--tracking-uri", uri, "--no-progress"],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def wait_for(pattern: str, root: Path, timeout: float = 300.0) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(root.rglob(pattern))
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"{pattern} did not appear under {root}")


def child_run(uri: str, experiment_name: str):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(experiment_name)
    (run,) = client.search_runs([experiment.experiment_id], "tags.`cl_harness.role` = 'child'")
    return client, run


def matrix_of(client, run, tmp_path, artifact: str = schema.MATRIX_ARTIFACT) -> list[list[float]]:
    import json

    path = client.download_artifacts(run.info.run_id, artifact, str(tmp_path))
    return json.loads(Path(path).read_text())["matrix"]


@pytest.mark.slow
@pytest.mark.parametrize(("how", "kind"), [(signal.SIGKILL, "encoder"), (signal.SIGINT, "encoder"), (signal.SIGKILL, "causal_lm")])
def test_interrupted_run_resumes_to_the_same_matrix_with_every_step_once(how, kind, tmp_path, tiny_bert, tiny_llama, capsys):
    flag = tmp_path / "pause"
    flag.touch()
    pause = [{"cl_test_plugins:PauseBeforeTask": {"flag_file": str(flag)}}]
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment = make_experiment(tmp_path, tiny_bert if kind == "encoder" else tiny_llama, "resume", pause, kind)

    process = start(experiment, uri, tmp_path)
    wait_for("pause.paused", tmp_path)  # inside the pause before task 2, step 1 logged
    process.send_signal(how)
    _, stderr = process.communicate(timeout=240)  # generous: a loaded CI machine is slow to wind down
    assert process.returncode != 0
    client, run = child_run(uri, "resume")
    if how == signal.SIGINT:
        assert process.returncode == 130 and "resume" in stderr
        assert run.info.status == "KILLED"
    steps_before = sorted(m.step for m in client.get_metric_history(run.info.run_id, schema.SEEN_AVG_METRIC))
    assert steps_before == [0, 1]

    # resume: the same command; with the flag gone the pause plugin lets it run to the end. In this process: the
    # resuming code path is the same, and the suite saves a second start of Python, torch and MLflow.
    flag.unlink()
    resumed_config = yaml.safe_load(experiment.read_text())
    capsys.readouterr()
    assert main(["run", str(experiment), "--tracking-uri", uri, "--no-progress"]) == 0, capsys.readouterr().err
    assert "resumed after task 1" in capsys.readouterr().out
    client, run = child_run(uri, "resume")
    assert run.info.status == "FINISHED"
    assert not list((tmp_path / "runs").rglob("checkpoint.pt"))  # a finished run keeps its results, not its weights
    assert not list((tmp_path / "runs").rglob("probe_features.step*.npz"))  # nor the probes' features (they are in MLflow)
    for key in (schema.SEEN_AVG_METRIC, "acc/t1", "acc/t2", "acc/t3", schema.probe_acc_metric("t1")):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [0, 1, 2, 3], key

    # the uninterrupted run of the same seed ends with the same accuracy matrix
    resumed_config["name"] = "uninterrupted"
    straight = tmp_path / "straight.yaml"
    straight.write_text(yaml.safe_dump(resumed_config, sort_keys=False))
    assert main(["run", str(straight), "--tracking-uri", uri, "--no-progress"]) == 0, capsys.readouterr().err
    client, reference_run = child_run(uri, "uninterrupted")
    resumed, uninterrupted = matrix_of(client, run, tmp_path / "a"), matrix_of(client, reference_run, tmp_path / "b")
    assert len(resumed) == len(uninterrupted) == 3
    for row, expected in zip(resumed, uninterrupted):
        assert row == pytest.approx(expected, abs=1e-6)
    assert run.data.metrics["acc"] == pytest.approx(reference_run.data.metrics["acc"], abs=1e-6)
    # the probing matrix too: the rows probed before the kill were kept (training.probe)
    probes = [matrix_of(client, r, tmp_path / f"p{i}", schema.PROBE_MATRIX_ARTIFACT) for i, r in enumerate((run, reference_run))]
    assert len(probes[0]) == len(probes[1]) == 3 and None not in probes[0][-1]
    for row, expected in zip(*probes):  # null where a task was not trained yet
        assert [v is None for v in row] == [v is None for v in expected]
        assert [v for v in row if v is not None] == pytest.approx([v for v in expected if v is not None], abs=1e-6)
    for key in ("probe_acc", "probe_forgetting"):
        assert run.data.metrics[key] == pytest.approx(reference_run.data.metrics[key], abs=1e-6)
    import numpy as np  # and the features every probe was fitted on, those of the steps before the kill included

    features = [np.load(client.download_artifacts(r.info.run_id, schema.PROBE_FEATURES_ARTIFACT, str(tmp_path / f"f{i}")))
                for i, r in enumerate((run, reference_run))]
    assert sorted(features[0].files) == sorted(features[1].files) and schema.probe_features_key(0, "t1", "train", "x") in features[0]
    for name in features[1].files:
        assert features[0][name] == pytest.approx(features[1][name], abs=1e-5), name


def test_a_finished_grid_is_skipped_and_restart_runs_it_again(tmp_path, tiny_bert, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    experiment = make_experiment(tmp_path, tiny_bert, "again", [])
    assert main(["run", str(experiment), "--tracking-uri", uri, "--no-progress"]) == 0
    assert main(["run", str(experiment), "--tracking-uri", uri, "--no-progress"]) == 0
    assert "already finished" in capsys.readouterr().out
    _, run = child_run(uri, "again")  # still exactly one child
    assert main(["run", str(experiment), "--tracking-uri", uri, "--no-progress", "--restart"]) == 0
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.get_experiment_by_name("again").experiment_id
    assert len(client.search_runs([experiment_id], "tags.`cl_harness.role` = 'child'")) == 2
    assert len([p for p in (tmp_path / "runs" / "again").iterdir() if p.is_dir()]) == 2  # the old folder is kept, renamed


def test_non_finite_loss_fails_that_run_with_its_partial_matrix_and_the_grid_goes_on(tmp_path, tiny_bert, capsys):
    from mlflow import MlflowClient

    write_demo_stream(tmp_path, "class_incremental", per_class=12, tasks=3)
    nan = {"name": "nan", "plugins": [{"cl_test_plugins:NanLossAtTask": {"task": 1}}]}
    experiment = write_experiment(tmp_path, tiny_bert, [nan, "naive"])
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["run", str(experiment), "--tracking-uri", uri, "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "non-finite loss" in out and "'nan'" in out and "task 't2'" in out and "step 1" in out
    client = MlflowClient(tracking_uri=uri)
    runs = {r.data.tags["strategy"]: r for r in client.search_runs([client.get_experiment_by_name("tiny").experiment_id], "tags.`cl_harness.role` = 'child'")}
    assert runs["nan"].info.status == "FAILED" and "non-finite loss" in runs["nan"].data.tags["error"]
    assert runs["naive"].info.status == "FINISHED"
    assert len(matrix_of(client, runs["nan"], tmp_path)) == 1  # the partial matrix: task 1 only
    assert sorted(m.step for m in client.get_metric_history(runs["nan"].info.run_id, schema.SEEN_AVG_METRIC)) == [0, 1]
