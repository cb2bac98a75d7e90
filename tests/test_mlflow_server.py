"""A grid run against a real ``mlflow server``, checked through the plain REST API the UI uses."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest
import yaml
from conftest import write_demo_stream, write_experiment
from mlflow_helpers import HTTP, artifact_paths, free_port, get, search_runs, serve, start_server, stop, tags_of
from cl_harness.tracking import schema

pytestmark = pytest.mark.slow

TASKS = ("t1", "t2")


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """The URL of a fresh ``mlflow server`` process, always terminated at teardown."""
    yield from serve(tmp_path_factory.mktemp("mlflow-server"))


# --- the test -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grid_run(mlflow_server, tiny_bert, tmp_path_factory):
    """2 strategies x 2 seeds on a 2-task demo stream, run through the CLI into the server."""
    from cl_harness.cli import main

    directory = tmp_path_factory.mktemp("grid")
    write_demo_stream(directory, "class_incremental", per_class=8, tasks=len(TASKS))
    path = write_experiment(directory, tiny_bert, ["naive", {"replay": {"mem_size": 10}}])
    config = yaml.safe_load(path.read_text())
    config.update(name="server-grid", seeds=[0, 1])
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    started = time.monotonic()
    code = main(["run", str(path), "--tracking-uri", mlflow_server, "--no-progress"])
    assert code == 0, f"cl-harness run exited with {code}"
    experiment = get(mlflow_server, "/api/2.0/mlflow/experiments/get-by-name", experiment_name="server-grid")
    return {"url": mlflow_server, "experiment_id": experiment["experiment"]["experiment_id"],
            "seconds": time.monotonic() - started}


def parent_and_children(grid_run) -> tuple[dict, list[dict]]:
    """The single parent run and the runs that name it as parent, from one unfiltered search."""
    runs = search_runs(grid_run["url"], grid_run["experiment_id"])
    parents = [r for r in runs if tags_of(r).get(schema.ROLE_TAG) == "parent"]
    assert len(parents) == 1, [r["info"]["run_name"] for r in runs]
    parent_id = parents[0]["info"]["run_id"]
    children = [r for r in runs if tags_of(r).get(schema.PARENT_RUN_TAG) == parent_id]
    assert len(runs) == 1 + len(children), "every run but the parent is one of its children"
    return parents[0], children


def test_runs_search_shows_one_parent_with_four_nested_children(grid_run):
    parent, children = parent_and_children(grid_run)
    assert parent["info"]["run_name"] == "server-grid" and parent["info"]["status"] == "FINISHED"
    names = sorted(r["info"]["run_name"] for r in children)
    assert names == [f"{s}/seed{k}/order0" for s in ("naive", "replay") for k in (0, 1)]
    for child in children:
        tags = tags_of(child)
        assert child["info"]["status"] == "FINISHED" and tags[schema.ROLE_TAG] == "child"
        assert tags["order"] == "0" and tags["stream"] == "tiny-demo" and tags["scenario"] == "class_incremental"
        assert {"acc", "bwt", "fwt", "forgetting", "learning_acc"} <= {m["key"] for m in child["data"]["metrics"]}
    # the server-side filter the UI and load_comparison rely on
    nested = search_runs(grid_run["url"], grid_run["experiment_id"], f"tags.{schema.PARENT_RUN_TAG} = '{parent['info']['run_id']}'")
    assert len(nested) == 4


def test_step_metrics_have_each_step_exactly_once(grid_run):
    _, children = parent_and_children(grid_run)
    for child in children:
        for key in [f"acc/{t}" for t in TASKS] + [schema.SEEN_AVG_METRIC]:
            history = get(grid_run["url"], "/api/2.0/mlflow/metrics/get-history", run_id=child["info"]["run_id"], metric_key=key)
            steps = sorted(m["step"] for m in history.get("metrics", []))
            assert steps == [0, 1, 2], (child["info"]["run_name"], key, steps)


def test_artifacts_are_listed_over_http(grid_run):
    parent, children = parent_and_children(grid_run)
    for child in children:
        assert {schema.MATRIX_ARTIFACT, schema.MATRIX_PLOT_ARTIFACT, schema.CONFIG_ARTIFACT} <= artifact_paths(grid_run["url"], child["info"]["run_id"])
    parent_id = parent["info"]["run_id"]
    assert {schema.CONFIG_ARTIFACT, schema.REPORT_HTML_ARTIFACT, schema.COMPARISON_TABLE_ARTIFACT} <= artifact_paths(grid_run["url"], parent_id)
    # the UI's artifact viewer downloads through /get-artifact
    query = urllib.parse.urlencode({"path": schema.REPORT_HTML_ARTIFACT, "run_uuid": parent_id})
    with HTTP.open(f"{grid_run['url']}/get-artifact?{query}", timeout=30) as response:
        html = response.read().decode("utf-8")
    assert "data:image/png;base64," in html and parent_id in html and "replay" in html


def test_the_comparison_reads_back_over_http(grid_run, tmp_path):
    from mlflow import MlflowClient

    from cl_harness.report.compare import load_comparison, markdown

    comparison = load_comparison(MlflowClient(tracking_uri=grid_run["url"]), "server-grid")
    table = comparison.table()
    assert sorted(table["strategy"]) == ["naive", "replay"] and list(table["n_finished"]) == [2, 2]
    assert all(r.has_matrix and r.tasks == list(TASKS) for r in comparison.runs)
    assert "| naive | 2/2 |" in markdown(table)


def test_a_server_lost_mid_run_loses_nothing_and_the_rerun_syncs(tmp_path, tiny_bert):
    root = tmp_path / "server"
    root.mkdir()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    flag = tmp_path / "pause"
    flag.touch()
    write_demo_stream(tmp_path, "class_incremental", per_class=12, tasks=2)
    pause = {"name": "naive", "plugins": ["naive", {"cl_test_plugins:PauseBeforeTask": {"flag_file": str(flag)}}]}
    experiment = write_experiment(tmp_path, tiny_bert, [pause])
    tests_dir = str(Path(__file__).resolve().parent)
    env = {**os.environ, "PYTHONPATH": tests_dir, "HF_HUB_OFFLINE": "1", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "5"}
    command = [sys.executable, "-m", "cl_harness", "run", str(experiment), "--tracking-uri", url, "--no-progress"]

    server = start_server(root, port)
    try:
        run = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not list((tmp_path / "runs").rglob("checkpoint.pt")) and time.monotonic() < deadline:
            time.sleep(0.05)
        stop(server)  # the server goes away after task 1, while the run waits before task 2
        flag.unlink()
        _, err = run.communicate(timeout=180)
        assert run.returncode == 3, err
        assert "run the same command again" in err and "Traceback" not in err
        server = start_server(root, port)  # back, on the same store
        rerun = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
        assert rerun.returncode == 0, rerun.stderr
        experiment_id = get(url, "/api/2.0/mlflow/experiments/get-by-name", experiment_name="tiny")["experiment"]["experiment_id"]
        (child,) = search_runs(url, experiment_id, "tags.`cl_harness.role` = 'child'")
        assert child["info"]["status"] == "FINISHED"
        for key in (schema.SEEN_AVG_METRIC, "acc/t1", "acc/t2"):
            history = get(url, "/api/2.0/mlflow/metrics/get-history", run_id=child["info"]["run_id"], metric_key=key)["metrics"]
            assert sorted(m["step"] for m in history) == [0, 1, 2], key
    finally:
        stop(server)
