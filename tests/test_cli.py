"""The cl-harness command end to end: validate, run into a real MLflow store, exit codes and messages."""

from __future__ import annotations

import json

import pytest
from conftest import write_demo_stream, write_experiment

from cl_harness.cli import main
from cl_harness.tracking import schema


@pytest.fixture
def experiment(tmp_path, tiny_bert):
    write_demo_stream(tmp_path, "class_incremental", per_class=16, tasks=3)
    return write_experiment(tmp_path, tiny_bert, ["naive"], epochs=2)


def test_validate_prints_the_tasks_and_exits_zero(experiment, capsys):
    assert main(["validate", str(experiment)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "t1" in out and "t3" in out and "class_incremental" in out


def test_validate_reports_a_bad_key_with_exit_code_2_and_no_traceback(experiment, capsys):
    text = experiment.read_text().replace("epochs: 2", "epochs: 2\n  learning_rat: 0.1")
    experiment.write_text(text)
    assert main(["validate", str(experiment)]) == 2
    err = capsys.readouterr().err
    assert "training.learning_rat: unknown key" in err and str(experiment) in err and "Traceback" not in err


def test_run_logs_every_step_metrics_and_artifacts_to_mlflow(experiment, tmp_path, capsys):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    assert main(["run", str(experiment), "--tracking-uri", uri, "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "naive/seed0/order0: FINISHED" in out and "after t3" in out and "acc=" in out

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    (parent,) = [r for r in runs if r.data.tags[schema.ROLE_TAG] == "parent"]
    (run,) = [r for r in runs if r.data.tags[schema.ROLE_TAG] == "child"]
    assert run.data.tags[schema.PARENT_RUN_TAG] == parent.info.run_id and parent.info.status == "FINISHED"
    assert run.info.status == "FINISHED" and run.info.run_name == "naive/seed0/order0"
    assert run.data.metrics["trainable_params"] > 0 and run.data.metrics["train_examples_per_s"] > 0
    assert {"acc", "bwt", "fwt", "forgetting", "forgetting_last", "learning_acc"} <= set(run.data.metrics)
    for key in ("acc/t1", "acc/t2", "acc/t3", schema.SEEN_AVG_METRIC):
        steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
        assert sorted(steps) == [0, 1, 2, 3], key  # step 0 is the untrained baseline, each step exactly once
    assert run.data.params["training.epochs"] == "2" and run.data.tags["strategy"] == "naive"
    assert run.data.tags["scenario"] == "class_incremental" and "versions.torch" in run.data.tags

    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {schema.MATRIX_ARTIFACT, schema.MATRIX_PLOT_ARTIFACT, schema.CONFIG_ARTIFACT} <= artifacts
    matrix = json.loads(open(client.download_artifacts(run.info.run_id, schema.MATRIX_ARTIFACT, str(tmp_path))).read())
    assert matrix["tasks"] == ["t1", "t2", "t3"] and len(matrix["matrix"]) == 3 and len(matrix["initial"]) == 3
    assert all(0.0 <= v <= 1.0 for row in matrix["matrix"] for v in row)
    # the accuracy on the task just trained is what the step metric recorded
    history = client.get_metric_history(run.info.run_id, "acc/t2")
    assert {m.step: m.value for m in history}[2] == pytest.approx(matrix["matrix"][1][1])


def test_a_refused_config_writes_nothing_to_the_store(experiment, tmp_path):
    store = tmp_path / "refused"
    text = experiment.read_text().replace("- naive", "- naiv")
    experiment.write_text(text)
    assert main(["run", str(experiment), "--tracking-uri", f"sqlite:///{store}/mlflow.db"]) == 2
    assert not store.exists()


def test_dry_run_prints_the_grid_without_training(experiment, capsys):
    text = experiment.read_text().replace("seeds:\n- 0", "seeds: [0, 1]\npermutations: 2")
    experiment.write_text(text.replace("- naive", "- naive\n- ewc"))
    assert main(["run", str(experiment), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "8 planned runs" in out and "ewc/seed1/order1" in out and "order: t1 -> t2 -> t3" in out


def test_an_order_that_does_not_name_the_stream_tasks_is_refused(experiment, capsys):
    experiment.write_text(experiment.read_text() + "orders: [[t1, t2, t4]]\n")
    assert main(["run", str(experiment), "--dry-run"]) == 2
    assert "orders[0]: an order must name every task" in capsys.readouterr().err


def test_strategies_lists_each_registered_name(capsys):
    from cl_harness.strategies import default_registry

    assert main(["strategies"]) == 0
    out = capsys.readouterr().out
    for name in default_registry().names():
        assert f"\n{name}: " in "\n" + out


def test_an_unreachable_tracking_server_is_reported_before_training(experiment, tmp_path, capsys):
    import socket

    with socket.socket() as sock:  # a loopback port with nothing listening
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert main(["run", str(experiment), "--tracking-uri", f"http://127.0.0.1:{port}", "--no-progress"]) == 3
    err = capsys.readouterr().err
    assert f"http://127.0.0.1:{port}" in err and "mlflow server" in err
    assert not (tmp_path / "runs").exists()  # nothing trained, no run folder


@pytest.mark.parametrize("argv", [["validate", "x.yaml", "--data-root="], ["compare", "x", "--out="], ["compare", ""],
                                  ["search-report", "x", "--out", " "], ["run", "x.yaml", "--ray-address="]])
def test_an_empty_path_or_name_flag_is_refused_not_read_as_the_default(argv, capsys):
    # --data-root= meant the current folder and compare --out= the default reports folder, silently.
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2 and "is empty; give a value or leave the flag out" in capsys.readouterr().err
