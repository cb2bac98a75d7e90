"""The ready-made benchmark streams under streams/: they load, the local twins cut and run, hub streams fail clearly offline."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml

from cl_harness.config.loader import load_stream, make_variables
from cl_harness.data.tasks import load_stream_tasks, load_task
from cl_harness.errors import ConfigError
from conftest import REPO, shared_data_dir

STREAMS = REPO / "streams"
ALL_STREAMS = sorted(STREAMS.rglob("*.yaml"))
HUB_STREAMS = sorted((STREAMS / "hub").glob("*.yaml"))
LOCAL_STREAMS = sorted((STREAMS / "local").glob("*.yaml"))
# Local streams without a hub twin are variants that substitute a task which has no local data.
SUBSTITUTED = [p for p in LOCAL_STREAMS if not (STREAMS / "hub" / p.name).exists()]
LOCAL_TWINS = [p for p in LOCAL_STREAMS if p not in SUBSTITUTED]
# Its 15 tasks cover every hub dataset the streams use: each one is checked offline.
REPRESENTATIVE_HUB = STREAMS / "hub" / "long_order4.yaml"
# A 3-task local twin (class-incremental over 24 classes, one split carved) for the end-to-end run.
END_TO_END = STREAMS / "local" / "standard_cl_order3.yaml"


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(STREAMS)) for p in paths]


def _variables(data_root: Path | None = None) -> dict[str, str]:
    """``${VAR}`` values: DATA_ROOT is ``data_root``, or where the benchmark data would be (reading a stream's schema
    reads no data, so those tests run where the folder is missing)."""
    if data_root is not None:
        return make_variables(data_root=data_root)
    return make_variables(environ={**os.environ, "DATA_ROOT": str(shared_data_dir())})


def _resized_copy(path: Path, directory: Path, per_class: int) -> Path:
    """A copy of the stream at ``path`` with train_per_class and test_per_class set to ``per_class`` for every task."""
    data = yaml.safe_load(path.read_text())
    for task in data["tasks"]:
        task["train_per_class"] = per_class
        task["test_per_class"] = per_class
    copy = directory / path.name
    copy.write_text(yaml.safe_dump(data, sort_keys=False))
    return copy


def test_the_stream_folders_hold_the_benchmarks():
    names = {p.name for p in HUB_STREAMS}
    expected = {f"standard_cl_order{k}.yaml" for k in (1, 2, 3)}
    expected |= {f"five_datasets_order{k}.yaml" for k in (1, 2, 3, 4)}
    expected |= {f"long_order{k}.yaml" for k in (4, 5, 6)}
    expected |= {"agnews_2x2.yaml", "dbpedia_7x2.yaml", "reviews_domain.yaml"}
    assert expected <= names
    assert names == {p.name for p in LOCAL_TWINS}, "every hub stream has a local twin of the same file name"
    for path in SUBSTITUTED:  # a local stream without a hub twin says why: a substituted task, or local-only by design
        text = path.read_text().lower()
        assert "substitution" in text or "local only" in text, f"{path.name}: say which task is substituted, or why it is local only"


@pytest.mark.parametrize("path", ALL_STREAMS, ids=_ids(ALL_STREAMS))
def test_every_stream_file_loads(path):
    stream = load_stream(path, _variables())
    assert len(stream.config.tasks) >= 2
    assert "${" not in yaml.safe_dump([t.label_names for t in stream.config.tasks])
    kind = {"hub": "hub", "local": "files"}.get(path.parent.name)
    if kind:
        assert {t.source.type for t in stream.config.tasks} == {kind}


@pytest.mark.parametrize("path", LOCAL_TWINS, ids=_ids(LOCAL_TWINS))
def test_each_local_twin_follows_its_hub_stream(path):
    """Same scenario, the hub order minus the tasks without local data, and those named in the description."""
    local = load_stream(path, _variables()).config
    hub = load_stream(STREAMS / "hub" / path.name, _variables()).config
    assert local.scenario == hub.scenario
    hub_names = [t.name for t in hub.tasks]
    local_names = [t.name for t in local.tasks]
    assert local_names == [name for name in hub_names if name in local_names], "local twin keeps the hub order"
    for missing in set(hub_names) - set(local_names):
        assert missing in local.description.lower(), f"{path.name}: the description must say {missing!r} is left out"


@pytest.mark.parametrize("path", LOCAL_STREAMS, ids=_ids(LOCAL_STREAMS))
def test_each_local_twin_cuts_every_task(path, benchmark_dir, tmp_path):
    stream = load_stream(_resized_copy(path, tmp_path, 4), _variables(benchmark_dir))
    tasks = load_stream_tasks(stream)
    assert [t.name for t in tasks] == [t.name for t in stream.config.tasks]
    for task in tasks:
        assert task.train_labels and task.test_labels, task.name
        assert len(set(task.train_labels)) >= 2 and len(set(task.test_labels)) >= 2, task.name
        for labels in (task.train_labels, task.test_labels):
            assert max(labels.count(c) for c in set(labels)) <= 4, task.name


@pytest.mark.parametrize("path", LOCAL_STREAMS, ids=_ids(LOCAL_STREAMS))
def test_validate_passes_every_local_stream(path, benchmark_dir, capsys):
    from cl_harness.cli import main

    assert main(["validate", str(path), "--data-root", str(benchmark_dir)]) == 0
    out = capsys.readouterr().out
    assert ": OK" in out.splitlines()[0]
    assert "output units:" in out and "not read" not in out


@pytest.mark.parametrize("path", HUB_STREAMS, ids=_ids(HUB_STREAMS))
def test_validate_a_hub_stream_offline_says_the_hub_is_unreachable_and_names_the_twin(path, capsys):
    from cl_harness.cli import main

    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "schema OK" in out.splitlines()[0]
    assert "the Hugging Face hub is unreachable" in out
    assert f"offline twin of this stream: {STREAMS / 'local' / path.name}" in out


def _assert_offline_hub_error(error: ConfigError) -> None:
    message = str(error)
    assert "could not load hub dataset" in message
    assert re.search(r"couldn't reach|offline|connection", message, re.IGNORECASE), message
    assert "local files" in message and "type: files" in message, message


def _expect_offline_failure(stream, index: int) -> None:
    try:
        load_task(stream, index)
    except ConfigError as error:
        _assert_offline_hub_error(error)
    else:  # pragma: no cover - only where the hub dataset is in the local cache
        pytest.skip(f"{stream.config.tasks[index].source.name} is in the local datasets cache")


@pytest.mark.parametrize("path", HUB_STREAMS, ids=_ids(HUB_STREAMS))
def test_hub_streams_say_offline_that_the_hub_is_unreachable(path):
    """Offline (conftest sets HF_HUB_OFFLINE=1), the first task fails with a message naming the way out."""
    _expect_offline_failure(load_stream(path, _variables()), 0)


def test_every_hub_dataset_of_the_representative_stream_fails_clearly_offline():
    stream = load_stream(REPRESENTATIVE_HUB, _variables())
    assert len(stream.config.tasks) == 15
    for index in range(len(stream.config.tasks)):
        _expect_offline_failure(stream, index)


def test_a_local_twin_runs_end_to_end(benchmark_dir, tiny_bert, tmp_path, capsys):
    from mlflow import MlflowClient

    from cl_harness.cli import main

    stream = _resized_copy(END_TO_END, tmp_path, 6)
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(
        yaml.safe_dump(
            {
                "name": "streams-e2e",
                "stream": stream.name,
                "backbone": {"name": str(tiny_bert), "pooling": "mean"},
                "training": {"epochs": 1, "batch_size": 8, "eval_batch_size": 64, "lr": 1e-3, "max_length": 32},
                "strategies": ["naive"],
                "seeds": [0],
            },
            sort_keys=False,
        )
    )
    uri = f"sqlite:///{tmp_path}/db"
    code = main(
        [
            "run", str(experiment),
            "--data-root", str(benchmark_dir),
            "--tracking-uri", uri,
            "--no-progress",
            "--set", f"checkpoint_dir={tmp_path}/runs",
        ]
    )
    assert code == 0, capsys.readouterr().err

    client = MlflowClient(tracking_uri=uri)
    found = client.get_experiment_by_name("streams-e2e")
    (child,) = client.search_runs([found.experiment_id], "tags.`cl_harness.role` = 'child'")
    assert child.info.status == "FINISHED"
    assert child.data.tags["stream"] == "standard-cl-order3-local"
    assert {"acc/amazon", "acc/agnews", "acc/dbpedia", "acc", "bwt"} <= set(child.data.metrics)
