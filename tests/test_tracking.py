"""MLflow logging against a real SQLite store, artifact builders and tracking-URI handling."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from mlflow import MlflowClient

from cl_harness.config.experiment import DEFAULT_TRACKING_URI
from cl_harness.errors import TrackingStoreError
from cl_harness.report.plots import plot_accuracy_matrix
from cl_harness.tracking.schema import PARENT_RUN_TAG, accuracy_matrix_dict, metric_key
from cl_harness.tracking.store import (
    check_tracking_reachable,
    default_artifact_location,
    get_or_create_experiment,
    resolve_tracking_uri,
)
from cl_harness.tracking.writer import RunLogger, default_tags, flatten_params, package_version
from cl_harness.tracking import schema

TASKS = ["ag_news", "sst2", "trec"]
INITIAL = [0.25, 0.5, 0.2]
MATRIX = [[0.9, 0.55, 0.3], [0.7, 0.92, 0.35], [0.65, 0.8, 0.95]]
CONFIG = {
    "name": "demo",
    "training": {"lr": 5e-5, "epochs": 2, "device": "auto", "eval_per_class": None},
    "strategies": ["naive", {"ewc": {"ewc_lambda": 0.4}}],
    "seeds": [0, 1],
    "backbone": {"name": "bundled:all-MiniLM-L6-v2", "extra": {}},
}


@dataclass
class Store:
    uri: str
    client: MlflowClient
    experiment_id: str
    run_id: str
    png: Path


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """One SQLite store with one finished run: config, 3 steps, final metrics, a dict and a PNG."""
    root = tmp_path_factory.mktemp("mlflow")
    uri = resolve_tracking_uri(f"sqlite:///{root}/db/mlflow.db")
    client = MlflowClient(tracking_uri=uri)
    experiment_id = get_or_create_experiment(client, "demo", default_artifact_location(uri, "demo"))
    png = plot_accuracy_matrix(TASKS, INITIAL, MATRIX, root / "plots" / schema.MATRIX_PLOT_ARTIFACT, "naive / seed 0")
    with RunLogger(client, experiment_id, "naive-seed0", tags=default_tags()) as run:
        run.log_config(CONFIG, {schema.strategy_param("ewc", "ewc_lambda"): 0.4})
        for step in range(1, 4):
            metrics = {schema.SEEN_AVG_METRIC: 0.5 + 0.1 * step, "acc/task 1 (%)": MATRIX[step - 1][0], "loss": 1.0 / step}
            run.log_step(step, metrics)
        run.log_final({"final/acc": 0.8, "final/bwt": -0.2})
        run.log_dict(accuracy_matrix_dict(TASKS, INITIAL, MATRIX), schema.MATRIX_ARTIFACT)
        run.log_figure_file(png)
    return Store(uri, client, experiment_id, run.run_id, png)


def test_run_finished_with_tags(store: Store) -> None:
    run = store.client.get_run(store.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "naive-seed0"
    assert run.data.tags["versions.mlflow"] != "not installed"
    assert set(run.data.tags) >= {f"versions.{p}" for p in ("torch", "transformers", "avalanche-lib", "datasets")}
    assert run.data.tags["git_dirty"] in ("true", "false", "unknown")


def test_params_flattened(store: Store) -> None:
    params = store.client.get_run(store.run_id).data.params
    assert params["name"] == "demo"
    assert params["training.lr"] == "5e-05"
    assert params["training.epochs"] == "2"
    assert params["training.eval_per_class"] == "null"
    assert "strategies" not in params and params["strategy.ewc.ewc_lambda"] == "0.4"  # one param per strategy parameter
    assert params["seeds"] == "[0, 1]"
    assert params["backbone.extra"] == "{}"
    assert "training" not in params


def test_metric_history_once_per_step(store: Store) -> None:
    for key in (schema.SEEN_AVG_METRIC, metric_key("acc/task 1 (%)"), "loss"):
        history = store.client.get_metric_history(store.run_id, key)
        assert sorted(m.step for m in history) == [1, 2, 3], key
    seen = store.client.get_metric_history(store.run_id, schema.SEEN_AVG_METRIC)
    assert [m.value for m in sorted(seen, key=lambda m: m.step)] == pytest.approx([0.6, 0.7, 0.8])
    metrics = store.client.get_run(store.run_id).data.metrics
    assert metrics["final/acc"] == pytest.approx(0.8)
    assert metrics["final/bwt"] == pytest.approx(-0.2)


def test_artifacts(store: Store, tmp_path: Path) -> None:
    names = {a.path for a in store.client.list_artifacts(store.run_id)}
    assert names == {schema.CONFIG_ARTIFACT, schema.MATRIX_ARTIFACT, schema.MATRIX_PLOT_ARTIFACT}
    local = Path(store.client.download_artifacts(store.run_id, schema.CONFIG_ARTIFACT, str(tmp_path)))
    assert yaml.safe_load(local.read_text()) == CONFIG
    local = Path(store.client.download_artifacts(store.run_id, schema.MATRIX_ARTIFACT, str(tmp_path)))
    assert json.loads(local.read_text()) == {"tasks": TASKS, "column_metrics": ["accuracy"] * len(TASKS), "initial": INITIAL, "matrix": MATRIX}


def test_artifacts_live_next_to_the_db(store: Store) -> None:
    location = store.client.get_experiment(store.experiment_id).artifact_location
    db_dir = Path(store.uri[len("sqlite:///") :]).parent
    assert location == (db_dir / "artifacts" / "demo").as_uri()
    assert (db_dir / "artifacts" / "demo" / store.run_id / "artifacts" / schema.MATRIX_PLOT_ARTIFACT).is_file()


def test_get_or_create_experiment_is_idempotent(store: Store) -> None:
    assert get_or_create_experiment(store.client, "demo", None) == store.experiment_id


def test_child_run_failed_and_many_params(store: Store) -> None:
    config = {"group": {f"p{i:03d}": i for i in range(250)}, "long": "x" * 10_000}
    child = RunLogger(store.client, store.experiment_id, "child", parent_run_id=store.run_id)
    with pytest.raises(RuntimeError), child as run:
        run.log_config(config)
        run.set_tags({"stage": 2})
        raise RuntimeError("boom")
    got = store.client.get_run(run.run_id)
    assert got.info.status == "FAILED"
    assert got.data.tags[PARENT_RUN_TAG] == store.run_id
    assert got.data.tags["stage"] == "2"
    assert len(got.data.params) == 251
    assert got.data.params["group.p249"] == "249"
    assert len(got.data.params["long"]) == 6000 and got.data.params["long"].endswith("...")


def test_end_rejects_unknown_status(store: Store) -> None:
    run = RunLogger(store.client, store.experiment_id, "killed")
    with pytest.raises(ValueError, match="FINISHED"):
        run.end("DONE")
    run.end("KILLED")
    assert store.client.get_run(run.run_id).info.status == "KILLED"


def test_missing_artifact_file(store: Store, tmp_path: Path) -> None:
    run = RunLogger(store.client, store.experiment_id, "missing")
    with pytest.raises(FileNotFoundError):
        run.log_artifact(tmp_path / "nope.png")
    run.end("FINISHED")


def test_metric_key() -> None:
    assert metric_key(schema.SEEN_AVG_METRIC) == schema.SEEN_AVG_METRIC
    # characters MLflow refuses become _ plus a short hash of the original, so distinct names stay distinct keys
    assert metric_key("acc/task 1 (%)").startswith("acc/task 1 ___-")
    assert metric_key("acc/task 1 (%)") != metric_key("acc/task 1 (#)")
    assert metric_key("loss:train@x").startswith("loss_train_x-")
    assert metric_key("acc/café") == "acc/cafe"
    assert metric_key("/acc//final/") == "acc/final"
    assert metric_key("a/../b/./c") == "a/__/b/c"
    assert metric_key("x" * 300) == "x" * 250
    with pytest.raises(ValueError):
        metric_key("//")


def test_flatten_params() -> None:
    assert flatten_params({"a": {"b": {"c": True}}, "d": [1, "x"], "e": Path("/p")}) == {
        "a.b.c": "true",
        "d": '[1, "x"]',
        "e": "/p",
    }


def test_resolve_tracking_uri_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri(None) == DEFAULT_TRACKING_URI
    assert (tmp_path / "mlruns").is_dir()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///env/store.db")
    assert resolve_tracking_uri(None) == "sqlite:///env/store.db"
    assert (tmp_path / "env").is_dir()
    assert resolve_tracking_uri("http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    assert not (tmp_path / "http:").exists()


def test_default_artifact_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    expected = (tmp_path.resolve() / "mlruns" / "artifacts" / "my_exp_1").as_uri()
    assert default_artifact_location("sqlite:///mlruns/mlflow.db", "my exp/1") == expected
    assert default_artifact_location("http://127.0.0.1:5000", "x") is None
    assert default_artifact_location("https://mlflow.example.org", "x") is None


def test_check_tracking_reachable(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    with pytest.raises(TrackingStoreError) as info:  # a store that does not answer: exit 3, not an input error
        check_tracking_reachable(uri, timeout=1.0)
    assert uri in str(info.value)
    assert "mlflow server --host 127.0.0.1 --port 5000" in str(info.value)
    check_tracking_reachable("sqlite:///mlruns/mlflow.db")  # local stores: no-op


def test_default_tags_outside_git(tmp_path: Path) -> None:
    tags = default_tags(tmp_path)
    assert tags["git_commit"] == "unknown"
    assert tags["git_dirty"] == "unknown"
    assert tags["versions.cl-harness"] == package_version("cl-harness")
    assert package_version("surely-not-a-package-xyz") == "not installed"


def test_heatmap_png(tmp_path: Path) -> None:
    path = plot_accuracy_matrix(TASKS, INITIAL, MATRIX[:2], tmp_path / "sub" / "m.png", "partial run")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000


def test_accuracy_matrix_dict_plain_and_checked() -> None:
    import numpy as np

    got = accuracy_matrix_dict(TASKS, np.array(INITIAL), np.array(MATRIX[:1]))
    assert got == {"tasks": TASKS, "column_metrics": ["accuracy"] * len(TASKS), "initial": INITIAL, "matrix": [MATRIX[0]]}
    mixed = ["masked_token_accuracy"] + ["accuracy"] * (len(TASKS) - 1)
    assert accuracy_matrix_dict(TASKS, INITIAL, MATRIX[:1], mixed)["column_metrics"] == mixed
    with pytest.raises(ValueError, match="column_metrics"):
        accuracy_matrix_dict(TASKS, INITIAL, MATRIX[:1], ["accuracy"])
    assert all(type(x) is float for x in got["initial"] + got["matrix"][0])
    with pytest.raises(ValueError, match="initial"):
        accuracy_matrix_dict(TASKS, INITIAL[:2], MATRIX)
    with pytest.raises(ValueError, match="row 1"):
        accuracy_matrix_dict(TASKS, INITIAL, [MATRIX[0], MATRIX[1][:2]])
    with pytest.raises(ValueError, match="rows"):
        accuracy_matrix_dict(TASKS, INITIAL, MATRIX + [MATRIX[0]])


def test_one_log_batch_call_per_step(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    run = RunLogger(store.client, store.experiment_id, "counted")
    calls: list[int] = []
    real = store.client.log_batch
    monkeypatch.setattr(store.client, "log_batch", lambda *a, **k: calls.append(1) or real(*a, **k))
    run.log_step(1, {f"acc/task{j}": 0.5 for j in range(20)})
    assert len(calls) == 1
    run.log_step(2, {"a:b": 0.1, "a@b": 0.2})  # distinct names stay distinct keys (a short hash of each)
    assert len(calls) == 2 and metric_key("a:b") != metric_key("a@b")
    run.end()


def test_a_tag_write_that_lost_an_insert_race_is_retried_and_other_failures_are_not():
    """Two processes finishing one grid tag the same runs at once: the loser's insert hits the unique key (seen in CI:
    experiment_tags, then tags of a shared child), and a retry finds the tag and updates it. A race lost five times in
    a row, or any other failure, goes on to the caller."""
    from mlflow.exceptions import MlflowException

    from cl_harness.tracking.store import retry_if_raced

    raced = MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: tags.key, tags.run_uuid")
    calls = []

    def write():
        calls.append(1)
        if len(calls) <= 3:
            raise raced
        return "written"

    assert retry_if_raced(write) == "written" and len(calls) == 4

    def always_raced():
        calls.append(1)
        raise raced

    calls.clear()
    with pytest.raises(MlflowException, match="UNIQUE"):
        retry_if_raced(always_raced)
    assert len(calls) == 5

    def broken():
        calls.append(1)
        raise MlflowException("(sqlite3.OperationalError) database is locked")

    calls.clear()
    with pytest.raises(MlflowException, match="locked"):
        retry_if_raced(broken)
    assert len(calls) == 1


def test_a_child_left_empty_by_a_stopped_open_is_discarded_before_the_run_opens_again(store: Store) -> None:
    """A process stopped while it opened a child leaves a run its folder never learnt the id of; the next open deletes it
    (it holds no metric), so the parent keeps one child of that name. Children that logged something are kept."""
    from cl_harness.tracking.writer import discard_empty_children

    client, experiment = store.client, store.experiment_id
    parent = RunLogger(client, experiment, "grid")
    name = "naive/seed7/order0"
    empty = RunLogger(client, experiment, name, parent_run_id=parent.run_id)
    empty.end("KILLED")
    logged = RunLogger(client, experiment, name, parent_run_id=parent.run_id)
    logged.log_step(0, {schema.SEEN_AVG_METRIC: 0.5})
    logged.end("KILLED")
    other = RunLogger(client, experiment, "naive/seed8/order0", parent_run_id=parent.run_id)  # another run: left alone
    other.end("KILLED")
    assert discard_empty_children(client, experiment, parent.run_id, name) == 1
    assert client.get_run(empty.run_id).info.lifecycle_stage == "deleted"
    assert client.get_run(logged.run_id).info.lifecycle_stage == client.get_run(other.run_id).info.lifecycle_stage == "active"
    parent.end("FINISHED")
