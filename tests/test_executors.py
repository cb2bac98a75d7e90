"""Executors: the grid in N local processes or as Ray tasks, tracked in one store, surviving dead workers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import local_ray_cluster, write_demo_stream, write_experiment

from cl_harness.cli import main
from cl_harness.tracking import schema

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
GRID_NAMES = sorted(f"{s}/seed{k}/order0" for s in ("naive", "replay") for k in (0, 1))


def grid_experiment(directory: Path, tiny_bert: Path, name: str, strategies: list, seeds: list[int]) -> Path:
    """A tiny 2-task demo grid called ``name``: ``strategies`` x ``seeds``, one epoch."""
    directory.mkdir(parents=True, exist_ok=True)
    write_demo_stream(directory, "class_incremental", per_class=8, tasks=2)
    path = write_experiment(directory, tiny_bert, strategies)
    config = yaml.safe_load(path.read_text())
    config.update(name=name, seeds=seeds)
    out = directory / f"{name}.yaml"
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def children(uri: str, experiment_name: str) -> dict:
    """The child runs of the experiment's single parent run, by run name."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.get_experiment_by_name(experiment_name).experiment_id
    (parent,) = client.search_runs([experiment_id], "tags.`cl_harness.role` = 'parent'")
    runs = client.search_runs([experiment_id], f"tags.{schema.PARENT_RUN_TAG} = '{parent.info.run_id}'")
    return {r.info.run_name: r for r in runs}


def matrix_of(uri: str, run, scratch: Path) -> list[list[float]]:
    from mlflow import MlflowClient

    scratch.mkdir(parents=True, exist_ok=True)
    path = MlflowClient(tracking_uri=uri).download_artifacts(run.info.run_id, schema.MATRIX_ARTIFACT, str(scratch))
    return json.loads(Path(path).read_text())["matrix"]


def steps_of(uri: str, run, key: str = schema.SEEN_AVG_METRIC) -> list[int]:
    from mlflow import MlflowClient

    return sorted(m.step for m in MlflowClient(tracking_uri=uri).get_metric_history(run.info.run_id, key))


# --- the core does not need ray; bad flags are refused before anything is written ------------------


def test_the_core_does_not_import_ray():
    code = ("import sys, cl_harness.cli, cl_harness.grid.experiment, cl_harness.grid.executors.local; "
            "print('ray' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--max-retries", "1"], "--max-retries: applies to runs in worker processes only"),
        (["--ray-address", "auto"], "--ray-address: applies to --executor ray only"),
        (["--executor", "ray", "--workers", "2"], "--workers: applies to --executor local only"),
        (["--executor", "ray", "--ray-address", "ray://head:10001"], "--tracking-uri: workers on the Ray cluster at ray://head:10001"),
    ],
)
def test_bad_execution_flags_exit_2_with_the_flag_named(flags, message, tmp_path, tiny_bert, capsys):
    experiment = grid_experiment(tmp_path, tiny_bert, "flags", ["naive"], [0])
    store = tmp_path / "store"
    assert main(["run", str(experiment), "--tracking-uri", f"sqlite:///{store}/mlflow.db", "--no-progress", *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not store.exists() and not (tmp_path / "runs").exists()


def test_the_ray_executor_without_ray_installed_says_how_to_install_it(tmp_path, tiny_bert, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    experiment = grid_experiment(tmp_path, tiny_bert, "noray", ["naive"], [0])
    assert main(["run", str(experiment), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--executor", "ray"]) == 2
    err = capsys.readouterr().err
    assert "--executor: --executor ray needs the ray package" in err and 'pip install "cl-harness[ray]"' in err


def test_the_comparison_names_planned_runs_that_never_logged(tmp_path):
    from mlflow import MlflowClient

    from cl_harness.report.compare import load_comparison

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    experiment_id = client.create_experiment("gaps", artifact_location=(tmp_path / "artifacts").as_uri())
    parent = client.create_run(experiment_id, run_name="gaps", tags={schema.ROLE_TAG: "parent"}).info.run_id
    client.log_dict(parent, {"runs": ["naive/seed0/order0", "naive/seed1/order0"]}, schema.PLANNED_RUNS_ARTIFACT)
    child = client.create_run(experiment_id, run_name="naive/seed0/order0",
                              tags={schema.PARENT_RUN_TAG: parent, schema.ROLE_TAG: "child", "strategy": "naive", "seed": "0"})
    client.set_terminated(child.info.run_id, "FAILED")
    comparison = load_comparison(client, "gaps", parent)
    problems = {r.name: r for r in comparison.problems()}
    assert set(problems) == {"naive/seed0/order0", "naive/seed1/order0"}
    assert problems["naive/seed1/order0"].status == "MISSING" and problems["naive/seed1/order0"].seed == 1
    assert list(comparison.table()["n_runs"]) == [2] and list(comparison.table()["n_finished"]) == [0]


# --- local worker processes -----------------------------------------------------------------------


@pytest.mark.slow
def test_two_local_workers_give_the_sequential_results_in_one_parent(tmp_path, tiny_bert, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    marker = tmp_path / "killed-once"
    killer = {"name": "naive", "plugins": ["naive", {"cl_test_plugins:KillProcessAtTask": {"task": 1, "marker_file": str(marker)}}]}
    parallel = grid_experiment(tmp_path / "parallel", tiny_bert, "parallel", [killer, {"replay": {"mem_size": 10}}, "ewc"], [0, 1])
    sequential = grid_experiment(tmp_path / "sequential", tiny_bert, "sequential", ["naive", {"replay": {"mem_size": 10}}, "ewc"], [0, 1])
    assert main(["run", str(parallel), "--tracking-uri", uri, "--no-progress", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert marker.exists() and out.count("resumed after task 1") == 1  # one worker died; a new one resumed its run
    assert out.count("task 1 forked from the shared prefix") == 4  # replay and ewc of each seed, on the workers
    assert main(["run", str(sequential), "--tracking-uri", uri, "--no-progress", "--no-prefix-sharing"]) == 0
    assert "6 of 6 runs finished" in capsys.readouterr().out
    ran, reference = children(uri, "parallel"), children(uri, "sequential")
    names = sorted([*GRID_NAMES, "ewc/seed0/order0", "ewc/seed1/order0"])
    assert sorted(ran) == sorted(reference) == names
    for name in names:
        assert ran[name].info.status == "FINISHED" and steps_of(uri, ran[name]) == [0, 1, 2]
        got, expected = matrix_of(uri, ran[name], tmp_path / "a" / name), matrix_of(uri, reference[name], tmp_path / "b" / name)
        for row, want in zip(got, expected, strict=True):
            assert row == pytest.approx(want, abs=1e-6), name


@pytest.mark.slow
def test_a_local_worker_that_always_dies_fails_its_run_after_the_retries(tmp_path, tiny_bert, capsys):
    from mlflow import MlflowClient

    from cl_harness.report.compare import load_comparison

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    doomed = {"name": "doomed", "plugins": ["naive", {"cl_test_plugins:KillProcessAtTask": {"task": 0}}]}
    experiment = grid_experiment(tmp_path, tiny_bert, "doomed", [doomed], [0])
    assert main(["run", str(experiment), "--tracking-uri", uri, "--no-progress", "--workers", "2", "--max-retries", "0"]) == 1
    assert "0 of 1 run finished" in capsys.readouterr().out
    (run,) = children(uri, "doomed").values()
    assert run.info.status == "FAILED" and "died on all 1 attempts (exit code -9)" in run.data.tags["error"]
    comparison = load_comparison(MlflowClient(tracking_uri=uri), "doomed")
    assert [(r.name, r.status) for r in comparison.problems()] == [("doomed/seed0/order0", "FAILED")]


def test_a_worker_killed_before_its_first_checkpoint_resumes_without_logging_step_0_twice(tmp_path, tiny_bert):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    marker = str(tmp_path / "killed")
    early = {"name": "early", "plugins": ["naive", {"cl_test_plugins:KillProcessAtTask": {"task": 0, "marker_file": marker}}]}
    experiment = grid_experiment(tmp_path, tiny_bert, "early", [early], [0])
    assert main(["run", str(experiment), "--tracking-uri", uri, "--no-progress", "--workers", "2"]) == 0
    assert Path(marker).exists(), "the first attempt died after logging step 0"
    (run,) = children(uri, "early").values()
    assert run.info.status == "FINISHED"
    assert steps_of(uri, run) == [0, 1, 2]


def test_a_tracking_outage_in_a_worker_stops_the_grid_with_exit_3_and_the_rerun_resumes(tmp_path, tiny_bert, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    outage = {"name": "outage", "plugins": ["naive", {"cl_test_plugins:StoreOutageAtTask": {"marker_file": str(tmp_path / "outage")}}]}
    experiment = grid_experiment(tmp_path, tiny_bert, "outage", [outage], [0, 1])
    command = ["run", str(experiment), "--tracking-uri", uri, "--no-progress", "--workers", "2"]
    assert main(command) == 3
    err = capsys.readouterr().err
    assert "the tracking store failed (TrackingStoreError: in the worker of outage/seed" in err
    assert "run the same command again" in err
    states = [json.loads(p.read_text()) for p in (tmp_path / "runs").rglob("state.json")]
    assert any(s["steps_done"] == 1 and s["status"] != "FINISHED" for s in states), "the run that met the outage kept its first task"

    assert main(command) == 0  # the store is back: the same command resumes
    runs = children(uri, "outage")
    assert {name: run.info.status for name, run in runs.items()} == {
        "outage/seed0/order0": "FINISHED", "outage/seed1/order0": "FINISHED",
    }
    for run in runs.values():
        assert steps_of(uri, run) == [0, 1, 2], "no step lost, none logged twice"


# --- Ray: a real local cluster and a live mlflow server ---------------------------------------------


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray cluster with 2 CPUs whose workers import this checkout and the test plugins."""
    yield from local_ray_cluster()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from mlflow_helpers import serve

    yield from serve(tmp_path_factory.mktemp("mlflow-server"))


@pytest.mark.slow
def test_ray_workers_import_this_checkout(ray_cluster):
    where = ray_cluster.get(ray_cluster.remote(lambda: __import__("cl_harness").__file__).remote())
    assert Path(where).resolve().is_relative_to(REPO)


@pytest.mark.slow
def test_a_ray_grid_survives_a_killed_worker_and_reports_all_four_runs(ray_cluster, server, tmp_path, tiny_bert, capsys):
    from mlflow import MlflowClient

    from cl_harness.report.compare import load_comparison

    marker = tmp_path / "killed-once"
    killer = {"name": "naive", "plugins": ["naive", {"cl_test_plugins:KillProcessAtTask": {"task": 1, "marker_file": str(marker)}}]}
    sharing = [{"replay": {"mem_size": 10}}, "ewc"]  # replay and ewc of each seed fork one shared task-1 prefix
    experiment = grid_experiment(tmp_path / "ray", tiny_bert, "ray-grid", [killer, *sharing], [0, 1])
    assert main(["run", str(experiment), "--executor", "ray", "--tracking-uri", server, "--no-progress", "--max-retries", "1"]) == 0
    out = capsys.readouterr().out
    assert marker.exists()  # one naive worker did die before task 2
    assert out.count("resumed after task 1") == 1  # ... and its retry continued from the task-1 checkpoint
    assert out.count("task 1 forked from the shared prefix") == 4  # on the Ray workers
    runs = children(server, "ray-grid")
    names = sorted([*GRID_NAMES, "ewc/seed0/order0", "ewc/seed1/order0"])
    assert sorted(runs) == names  # one MLflow run per planned run: the retry reopened the killed one
    for name, run in runs.items():
        assert run.info.status == "FINISHED", name
        for key in (schema.SEEN_AVG_METRIC, "acc/t1", "acc/t2"):
            assert steps_of(server, run, key) == [0, 1, 2], (name, key)  # nothing logged twice
    comparison = load_comparison(MlflowClient(tracking_uri=server), "ray-grid")
    assert sorted(r.name for r in comparison.runs) == names and not comparison.problems()
    assert list(comparison.table()["n_finished"]) == [2, 2, 2]

    # the forked runs end as the same runs trained whole, here in this process
    reference_uri = f"sqlite:///{tmp_path}/reference.db"
    reference_grid = grid_experiment(tmp_path / "reference", tiny_bert, "ray-reference", sharing, [0, 1])
    assert main(["run", str(reference_grid), "--tracking-uri", reference_uri, "--no-progress", "--no-prefix-sharing"]) == 0
    for name, expected_run in children(reference_uri, "ray-reference").items():
        assert runs[name].data.tags.get(schema.SHARED_PREFIX_TASKS_TAG) == "1", name
        got = matrix_of(server, runs[name], tmp_path / "a" / name)
        expected = matrix_of(reference_uri, expected_run, tmp_path / "b" / name)
        for row, want in zip(got, expected, strict=True):
            assert row == pytest.approx(want, abs=1e-6), name


@pytest.mark.slow
def test_a_ray_run_whose_worker_always_dies_fails_and_the_grid_finishes(ray_cluster, tmp_path, tiny_bert, capsys):
    from mlflow import MlflowClient

    from cl_harness.report.compare import load_comparison

    server = f"sqlite:///{tmp_path}/mlflow.db"  # a cluster started on this machine can share the local store

    attempts = tmp_path / "broken-attempts"
    doomed = {"name": "doomed", "plugins": ["naive", {"cl_test_plugins:KillProcessAtTask": {"task": 1}}]}
    broken = {"name": "broken", "plugins": ["naive", {"cl_test_plugins:RaiseAtTask": {"count_file": str(attempts)}}]}
    experiment = grid_experiment(tmp_path, tiny_bert, "ray-doomed", [doomed, broken, "naive"], [0])
    assert main(["run", str(experiment), "--executor", "ray", "--tracking-uri", server, "--no-progress", "--max-retries", "1"]) == 1
    assert "1 of 3 runs finished" in capsys.readouterr().out
    runs = children(server, "ray-doomed")
    assert runs["naive/seed0/order0"].info.status == "FINISHED"
    lost = runs["doomed/seed0/order0"]
    assert lost.info.status == "FAILED" and "died on all 2 attempts" in lost.data.tags["error"]
    assert steps_of(server, lost) == [0, 1]  # the retry resumed after task 1 and did not log it again
    bug = runs["broken/seed0/order0"]
    assert bug.info.status == "FAILED" and "RuntimeError: a bug in the strategy" in bug.data.tags["error"]
    assert attempts.read_text().count("attempt") == 1  # an ordinary error is not retried
    comparison = load_comparison(MlflowClient(tracking_uri=server), "ray-doomed")
    problems = [(r.name, r.status) for r in comparison.problems()]
    assert problems == [("broken/seed0/order0", "FAILED"), ("doomed/seed0/order0", "FAILED")]


@pytest.mark.slow
def test_a_search_on_ray_runs_its_trials_in_ray_workers_sharing_each_study(ray_cluster, tmp_path, tiny_bert, capsys):
    """2 strategies x 2 trials with --executor ray on a 2-CPU cluster: 2 tasks, each one trial of each study."""
    from test_search_processes import check_trained_in_two_other_processes, two_strategy_search

    path, pids, uri = two_strategy_search(tmp_path, tiny_bert)
    assert main(["run", str(path), "--tracking-uri", uri, "--no-progress", "--executor", "ray", "--search-only"]) == 0
    assert "its missing trials run here" not in capsys.readouterr().err
    check_trained_in_two_other_processes(tmp_path, pids, uri)  # the two Ray workers
