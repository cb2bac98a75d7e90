"""Checkpoints survive corruption: size and sha256 beside each, the previous one kept as a fallback, a clear exit 2
naming the file and --restart when none is intact, and a full disk during the write (torch's RuntimeError) handled."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from conftest import write_demo_stream, write_experiment

from cl_harness.errors import ConfigError
from cl_harness.runner.checkpoint import (
    CHECKPOINT_FILE,
    PREVIOUS_CHECKPOINT_FILE,
    digest_path,
    load_checkpoint,
    save_checkpoint,
)

TESTS = Path(__file__).resolve().parent


def save(folder: Path, step: int, weight: float) -> None:
    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(weight)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    save_checkpoint(folder, step, model, optimizer, [], SimpleNamespace(train_exp_counter=step))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def test_each_checkpoint_has_its_size_and_hash_and_the_previous_one_is_kept(tmp_path):
    save(tmp_path, 1, 1.0)
    save(tmp_path, 2, 2.0)
    digest = json.loads(digest_path(tmp_path / CHECKPOINT_FILE).read_text())
    assert digest["size"] == (tmp_path / CHECKPOINT_FILE).stat().st_size and len(digest["sha256"]) == 64 and digest["step"] == 2
    assert json.loads(digest_path(tmp_path / PREVIOUS_CHECKPOINT_FILE).read_text())["step"] == 1
    assert load_checkpoint(tmp_path)["step"] == 2
    assert not list(tmp_path.glob(".*.tmp"))


@pytest.mark.parametrize("damage", [truncate, flip_a_byte], ids=["truncated", "flipped byte"])
def test_a_damaged_checkpoint_falls_back_to_the_previous_one(damage, tmp_path, capsys):
    save(tmp_path, 1, 1.0)
    save(tmp_path, 2, 2.0)
    damage(tmp_path / CHECKPOINT_FILE)
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint["step"] == 1 and float(checkpoint["model"]["weight"][0, 0]) == 1.0
    assert "damaged" in capsys.readouterr().err


def test_no_intact_checkpoint_is_a_clear_error_naming_the_file_and_restart(tmp_path):
    save(tmp_path, 1, 1.0)
    save(tmp_path, 2, 2.0)
    truncate(tmp_path / CHECKPOINT_FILE)
    truncate(tmp_path / PREVIOUS_CHECKPOINT_FILE)
    with pytest.raises(ConfigError) as raised:
        load_checkpoint(tmp_path)
    message = str(raised.value)
    assert str(tmp_path / CHECKPOINT_FILE) in message and "--restart" in message and len(message) < 400


def test_a_checkpoint_without_a_digest_file_still_loads(tmp_path):
    save(tmp_path, 1, 1.0)
    digest_path(tmp_path / CHECKPOINT_FILE).unlink()  # written by an older version
    assert load_checkpoint(tmp_path)["step"] == 1


def failing_save(original, after_bytes: int = 100):
    """torch.save that writes ``after_bytes`` of a checkpoint and then fails as on a full disk."""

    def fake(obj, f, *args, **kwargs):
        if not (isinstance(obj, dict) and "step" in obj and "model" in obj):  # not a checkpoint (e.g. the token cache)
            return original(obj, f, *args, **kwargs)
        f.write(b"\0" * after_bytes)
        raise RuntimeError("[enforce fail at inline_container.cc:778] . PytorchStreamWriter failed writing file data/3: file write failed")

    return fake


def test_a_full_disk_during_the_write_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    save(tmp_path, 1, 1.0)
    monkeypatch.setattr(torch, "save", failing_save(torch.save))
    with pytest.raises(OSError) as raised:
        save(tmp_path, 2, 2.0)
    assert raised.value.errno == errno.ENOSPC
    assert load_checkpoint(tmp_path)["step"] == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_write_that_fails_in_the_background_is_raised_by_wait_and_the_last_good_checkpoint_stays(tmp_path, monkeypatch):
    """The file is written by a background thread (start_checkpoint); its error reaches the run when it waits."""
    import cl_harness.runner.checkpoint as checkpoint

    save(tmp_path, 1, 1.0)

    def full_disk(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(checkpoint.os, "fsync", full_disk)
    model = torch.nn.Linear(3, 2)
    pending = checkpoint.start_checkpoint(tmp_path, 2, model, torch.optim.SGD(model.parameters(), lr=0.1), [], SimpleNamespace())
    with pytest.raises(OSError) as raised:
        pending.wait()
    assert raised.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert load_checkpoint(tmp_path)["step"] == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_the_checkpoint_is_a_snapshot_taken_when_it_starts(tmp_path):
    """Training may go on while the bytes are written: what is saved is the state when ``start_checkpoint`` was called."""
    from cl_harness.runner.checkpoint import start_checkpoint

    model = torch.nn.Linear(3, 2)
    with torch.no_grad():
        model.weight.fill_(1.0)
    pending = start_checkpoint(tmp_path, 1, model, torch.optim.SGD(model.parameters(), lr=0.1), [], SimpleNamespace())
    with torch.no_grad():
        model.weight.fill_(5.0)
    pending.wait()
    assert torch.equal(load_checkpoint(tmp_path)["model"]["weight"], torch.ones(2, 3))


def test_a_full_disk_during_a_run_exits_3_and_leaves_nothing_running(tmp_path, tiny_bert, monkeypatch, capsys):
    from cl_harness.cli import main

    write_demo_stream(tmp_path, per_class=8)
    experiment = write_experiment(tmp_path, tiny_bert, ["naive"])
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(torch, "save", failing_save(torch.save))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["run", str(experiment), "--tracking-uri", uri, "--no-progress"]) == 3
    err = capsys.readouterr().err
    message = err[err.find("error: "):]  # after MLflow's own lines about creating a new store
    assert message.startswith("error: no space left") and "Traceback" not in err and message.count("\n") <= 3, err
    with sqlite3.connect(tmp_path / "mlflow.db") as db:
        statuses = [row[0] for row in db.execute("select status from runs")]
    assert statuses and "RUNNING" not in statuses, statuses


def cli(experiment: Path, uri: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")]), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "cl_harness", "run", str(experiment), "--tracking-uri", uri, "--no-progress"],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )


@pytest.mark.slow
def test_a_killed_run_with_a_damaged_checkpoint_resumes_from_the_previous_one(tmp_path, tiny_bert, monkeypatch, capsys):
    """Killed before task 3 (checkpoints after tasks 1 and 2 on disk): both damaged gives exit 2 naming the file and
    --restart; with only the last damaged, the run resumes after task 1 and logs every step exactly once."""
    from mlflow import MlflowClient

    from cl_harness.cli import main

    write_demo_stream(tmp_path, per_class=8, tasks=3)
    kill = {"cl_test_plugins:KillProcessAtTask": {"task": 2, "marker_file": str(tmp_path / "killed")}}
    experiment = write_experiment(tmp_path, tiny_bert, [{"name": "naive", "plugins": ["naive", kill]}])
    uri = f"sqlite:///{tmp_path}/mlflow.db"

    first = cli(experiment, uri, tmp_path)
    assert first.returncode == -9, first.stderr[-2000:]
    (folder,) = {p.parent for p in (tmp_path / "runs").rglob(CHECKPOINT_FILE)}
    assert json.loads(digest_path(folder / CHECKPOINT_FILE).read_text())["step"] == 2
    backup = tmp_path / "previous-backup"
    shutil.copy(folder / PREVIOUS_CHECKPOINT_FILE, backup)
    truncate(folder / CHECKPOINT_FILE)
    truncate(folder / PREVIOUS_CHECKPOINT_FILE)

    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(TESTS))  # the test plugins, as the subprocess had them
    argv = ["run", str(experiment), "--tracking-uri", uri, "--no-progress"]
    assert main(argv) == 2  # the same command, in this process: it saves starting another interpreter
    refused = capsys.readouterr().err
    assert "Traceback" not in refused and "--restart" in refused and str(folder / CHECKPOINT_FILE) in refused, refused

    shutil.copy(backup, folder / PREVIOUS_CHECKPOINT_FILE)
    assert main(argv) == 0
    resumed = capsys.readouterr().err
    assert "damaged" in resumed and "previous checkpoint (after task 1)" in resumed, resumed

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    assert {r.info.status for r in runs} == {"FINISHED"}
    (child,) = [r for r in runs if r.data.tags.get("cl_harness.role") == "child"]
    steps = sorted(m.step for m in client.get_metric_history(child.info.run_id, "acc/seen_avg"))
    assert steps == [0, 1, 2, 3]


def checkpoints_recorded_and_one_stop_before_the_outcome(monkeypatch) -> list[int]:
    """The steps the runs checkpoint after, appended to the list returned; the first run to finish is stopped (Ctrl-C)
    between its last logged step and its outcome."""
    import cl_harness.runner.run as run_module

    written = []
    real_start = run_module.start_checkpoint
    monkeypatch.setattr(run_module, "start_checkpoint", lambda folder, step, *rest: (written.append(step), real_start(folder, step, *rest))[1])
    real_outcome = run_module.TrainingRun._save_outcome

    def stop_once(self, state, result):
        monkeypatch.setattr(run_module.TrainingRun, "_save_outcome", real_outcome)
        raise KeyboardInterrupt

    monkeypatch.setattr(run_module.TrainingRun, "_save_outcome", stop_once)
    return written


def test_no_checkpoint_after_the_last_task_and_a_run_stopped_there_resumes_from_the_one_before(tmp_path, tiny_bert, monkeypatch, capsys):
    """The last task's weights would be deleted unread when the run finishes: none are written. A run stopped between
    its last logged step and its outcome resumes from the checkpoint after task 2 and ends as an uninterrupted run."""
    from cl_harness.cli import main

    write_demo_stream(tmp_path, per_class=8, tasks=3)
    experiment = write_experiment(tmp_path, tiny_bert, ["naive"])
    monkeypatch.chdir(tmp_path)
    written = checkpoints_recorded_and_one_stop_before_the_outcome(monkeypatch)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    argv = ["run", str(experiment), "--tracking-uri", uri, "--no-progress"]
    assert main(argv) == 130
    assert written == [1, 2]
    capsys.readouterr()
    assert main(argv) == 0
    assert "resumed after task 2" in capsys.readouterr().out
    assert written == [1, 2]  # the resumed run retrained task 3 and wrote nothing after it
    assert not list((tmp_path / "runs").rglob(CHECKPOINT_FILE))

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (child,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], "tags.`cl_harness.role` = 'child'")
    assert child.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(child.info.run_id, "acc/seen_avg")) == [0, 1, 2, 3]
    straight = yaml_copy(experiment, tmp_path / "straight.yaml", name="straight")
    assert main(["run", str(straight), "--tracking-uri", uri, "--no-progress"]) == 0
    (reference,) = client.search_runs([client.get_experiment_by_name("straight").experiment_id], "tags.`cl_harness.role` = 'child'")
    assert child.data.metrics["acc"] == pytest.approx(reference.data.metrics["acc"], abs=1e-6)
    assert child.data.metrics["forgetting"] == pytest.approx(reference.data.metrics["forgetting"], abs=1e-6)


def yaml_copy(path: Path, to: Path, **changes) -> Path:
    import yaml

    config = {**yaml.safe_load(path.read_text()), **changes}
    to.write_text(yaml.safe_dump(config, sort_keys=False))
    return to


def test_tasks_shorter_than_checkpoint_every_s_are_not_checkpointed_and_a_stopped_run_retrains_them(tmp_path, tiny_bert, monkeypatch, capsys):
    """checkpoint_every_s: an hour: a tiny 3-task run writes no checkpoint; stopped before its outcome, it starts again
    from task 1 in the same MLflow run (every step logged once) and ends as a run checkpointed after every task."""
    from cl_harness.cli import main

    write_demo_stream(tmp_path, per_class=8, tasks=3)
    experiment = yaml_copy(write_experiment(tmp_path, tiny_bert, ["naive"]), tmp_path / "hourly.yaml", checkpoint_every_s=3600)
    monkeypatch.chdir(tmp_path)
    written = checkpoints_recorded_and_one_stop_before_the_outcome(monkeypatch)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    assert main(["run", str(experiment), "--tracking-uri", uri, "--no-progress"]) == 130
    assert written == [] and not list((tmp_path / "runs").rglob(CHECKPOINT_FILE))
    capsys.readouterr()
    assert main(["run", str(experiment), "--tracking-uri", uri, "--no-progress"]) == 0
    assert "resumed" not in capsys.readouterr().out and written == []

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    (child,) = client.search_runs([client.get_experiment_by_name("tiny").experiment_id], "tags.`cl_harness.role` = 'child'")
    assert child.info.status == "FINISHED"
    assert sorted(m.step for m in client.get_metric_history(child.info.run_id, "acc/seen_avg")) == [0, 1, 2, 3]
    every_task = yaml_copy(experiment, tmp_path / "every.yaml", name="every", checkpoint_every_s=0)
    assert main(["run", str(every_task), "--tracking-uri", uri, "--no-progress"]) == 0
    assert written == [1, 2]
    (reference,) = client.search_runs([client.get_experiment_by_name("every").experiment_id], "tags.`cl_harness.role` = 'child'")
    for metric in ("acc", "forgetting", "bwt"):
        assert child.data.metrics[metric] == pytest.approx(reference.data.metrics[metric], abs=1e-6)


# --- a run folder damaged between a kill and the resume: exit 2 before training, naming the file and --restart ---------


def state_of(**changes) -> dict:
    """A valid state.json of a 3-task run checkpointed after task 1, with ``changes``."""
    state = {"run_id": "abc", "status": "RUNNING", "steps_done": 1, "tasks": ["t1", "t2", "t3"], "initial": [0.0, 0.5, 0.25],
             "matrix": [[0.9, 0.4, 0.3]], "correct": [["AA", "AA", None], ["AA", "AA", None]], "valid_initial": [],
             "valid_matrix": [], "metrics": {}, "error": None, "train_time_saved_s": 0.0, "probe_rows": {}}
    return {**state, **changes}


def write_state(folder: Path, text: str) -> Path:
    path = folder / "state.json"
    path.write_text(text)
    return path


NAN = float("nan")
INCONSISTENT_STATES = {
    "a row shorter than the tasks": state_of(matrix=[[0.5]]),
    "NaN in the test matrix": state_of(matrix=[[NAN, 0.4, 0.3]]),
    "an accuracy above 1": state_of(matrix=[[1.5, 0.4, 0.3]]),
    "an infinite initial accuracy": state_of(initial=[0.0, float("inf"), 0.25]),
    "text for a number": state_of(initial=[0.0, "0.5", 0.25]),
    "a boolean for a number": state_of(matrix=[[True, 0.4, 0.3]]),
    "steps_done as text": state_of(steps_done="1"),
    "steps_done past the rows": state_of(steps_done=2),
    "a negative steps_done": state_of(steps_done=-1),
    "more rows than tasks": state_of(matrix=[[0.9, 0.4, 0.3]] * 4, steps_done=0),
    "tasks not names": state_of(tasks="t1"),
    "an unknown status": state_of(status="PAUSED"),
    "a matrix that is a mapping": state_of(matrix={"1": [0.9, 0.4, 0.3]}),
    "correct rows of another length": state_of(correct=[["AA"], ["AA"]]),
    "more correct rows than steps": state_of(correct=[["AA", "AA", None]] * 3),
    "a validation row of another length": state_of(valid_initial=[NAN, NAN]),
    "a validation accuracy above 1": state_of(valid_initial=[2.0, NAN, NAN], valid_matrix=[[0.5, NAN, NAN]]),
    "a metric that is text": state_of(metrics={"acc": "high"}),
    "a probe row for a step past the tasks": state_of(probe_rows={"7": [0.5, NAN, NAN]}),
    "a data fingerprint that is not a mapping": state_of(data_sha256=["ab"]),
}


@pytest.mark.parametrize("state", INCONSISTENT_STATES.values(), ids=INCONSISTENT_STATES.keys())
def test_a_state_file_that_is_json_but_not_a_consistent_run_state_is_refused_naming_it_and_restart(state, tmp_path):
    from cl_harness.runner.checkpoint import load_state

    path = write_state(tmp_path, json.dumps(state))
    with pytest.raises(ConfigError) as raised:
        load_state(tmp_path)
    message = str(raised.value)
    assert str(path) in message and "--restart" in message and message.count("\n") == 1 and len(message) < 500, message


CONSISTENT_STATES = {
    "a new run": {"run_id": "abc"},
    "a run before its first checkpoint": state_of(steps_done=0, matrix=[[0.9, 0.4, 0.3], [0.8, 0.7, 0.3]],
                                                  correct=[["AA", "AA", None]] * 3),
    "validation NaN where a task has no split": state_of(valid_initial=[0.5, NAN, NAN], valid_matrix=[[0.5, NAN, NAN]]),
    "probe rows NaN where not probed": state_of(probe_rows={"0": [0.5, NAN, NAN], "1": [0.7, NAN, NAN]}),
    "a finished joint run (one row)": state_of(status="FINISHED", steps_done=0, metrics={"acc": 0.5, "fwt": NAN}),
    "an older file without correct, validation, probes or fingerprint": {
        "run_id": "abc", "status": "FAILED", "steps_done": 1, "tasks": ["t1", "t2"], "initial": [0.5, 0.5],
        "matrix": [[1.0, 0.0]], "metrics": {}, "error": "boom"},
    "integers as accuracies": state_of(initial=[0, 1, 0]),
    "a data fingerprint": state_of(data_sha256={"t1": "ab", "t2": "cd", "t3": "ef"}),
}


@pytest.mark.parametrize("state", CONSISTENT_STATES.values(), ids=CONSISTENT_STATES.keys())
def test_consistent_states_old_and_new_still_load(state, tmp_path):
    from cl_harness.runner.checkpoint import load_state

    write_state(tmp_path, json.dumps(state))
    assert load_state(tmp_path).run_id == "abc"


def test_a_checkpoint_that_is_a_folder_is_refused_naming_it_and_restart(tmp_path):
    save(tmp_path, 1, 1.0)
    (tmp_path / CHECKPOINT_FILE).unlink()
    (tmp_path / CHECKPOINT_FILE).mkdir()
    with pytest.raises(ConfigError) as raised:
        load_checkpoint(tmp_path)
    message = str(raised.value)
    assert str(tmp_path / CHECKPOINT_FILE) in message and "--restart" in message and "folder" in message, message


def test_a_checkpoint_ahead_of_the_state_gives_way_to_the_previous_one(tmp_path):
    """Killed after the checkpoint after task 2 was written but before state.json recorded task 2's row: the run resumes
    from the checkpoint after task 1, whose rows it holds, instead of skipping a row."""
    save(tmp_path, 1, 1.0)
    save(tmp_path, 2, 2.0)
    assert load_checkpoint(tmp_path, scored=2)["step"] == 2
    assert load_checkpoint(tmp_path, scored=1)["step"] == 1
    (tmp_path / PREVIOUS_CHECKPOINT_FILE).unlink()
    assert load_checkpoint(tmp_path, scored=1) is None  # nothing it can continue: the run starts again


def test_changed_data_is_named_per_task_and_a_state_without_fingerprints_passes(tmp_path):
    from types import SimpleNamespace as Task

    from cl_harness.runner.checkpoint import RunState, check_same_data, data_fingerprints

    def task(name: str, test_targets: list[int]):
        inputs = torch.arange(24).reshape(2, 3, 4)
        return Task(name=name, train_inputs=inputs, train_targets=torch.tensor([0, 1]), test_inputs=inputs,
                    test_targets=torch.tensor(test_targets), valid_inputs=None, valid_targets=None)

    before = data_fingerprints([task("a", [0, 1]), task("b", [0, 1])])
    after = data_fingerprints([task("a", [0, 1]), task("b", [1, 0])])
    assert before["a"] == after["a"] and before["b"] != after["b"]
    check_same_data(RunState(), after, tmp_path / "state.json")  # written before fingerprints were kept
    check_same_data(RunState(data_sha256=before), before, tmp_path / "state.json")
    with pytest.raises(ConfigError) as raised:
        check_same_data(RunState(data_sha256=before), after, tmp_path / "state.json")
    message = str(raised.value)
    assert "'b'" in message and "'a'" not in message and "--restart" in message and str(tmp_path / "state.json") in message


def demo_file_stream(folder: Path, tasks: int = 3) -> None:
    """``stream.yaml`` over JSON-lines files in ``folder/data`` (two demo topics per task), which a test may edit."""
    import yaml

    from cl_harness.data.demo import DEMO_LABELS, generate_demo_rows

    (folder / "data").mkdir()
    entries = []
    for i in range(tasks):
        name, labels = f"t{i + 1}", DEMO_LABELS[2 * i : 2 * i + 2]
        for split, count in (("train", 8), ("test", 10)):
            rows = generate_demo_rows(labels, count, i, split)
            (folder / "data" / f"{name}_{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        entries.append({"name": name, "source": {"type": "files", "train_file": f"data/{name}_train.jsonl",
                                                 "test_file": f"data/{name}_test.jsonl"}})
    stream = {"name": "files", "scenario": "class_incremental", "tasks": entries}
    (folder / "stream.yaml").write_text(yaml.safe_dump(stream, sort_keys=False))


KILLED_PARTS = ("runs", "artifacts", "data")


@pytest.fixture(scope="module")
def killed_after_task_1(tmp_path_factory, tiny_bert) -> Path:
    """A 3-task run (files on disk, checkpoint after every task) killed after the checkpoint after task 1: as after a
    SIGKILL, its parent and child runs are left RUNNING. Made once; ``killed_run`` restores a copy for each test."""
    import cl_harness.grid.experiment as experiment_module
    import cl_harness.runner.run as run_module
    from cl_harness.cli import main

    folder = tmp_path_factory.mktemp("killed")
    demo_file_stream(folder)
    experiment = write_experiment(folder, tiny_bert, ["naive"])
    real_log_step = run_module.TrainingRun._log_step

    def killed_after_step_1(self, step, row, extra):
        real_log_step(self, step, row, extra)
        if step == 1:
            raise KeyboardInterrupt

    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        patch.setattr(run_module.TrainingRun, "_log_step", killed_after_step_1)
        patch.setattr(experiment_module, "end_quietly", lambda logger, status: None)  # a SIGKILL ends no run
        assert main(["run", str(experiment), "--tracking-uri", f"sqlite:///{folder}/mlflow.db", "--no-progress"]) == 130
    assert statuses(folder / "mlflow.db") == ["RUNNING", "RUNNING"]
    snapshot = folder / "snapshot"
    for part in (*KILLED_PARTS, "mlflow.db"):
        (shutil.copytree if (folder / part).is_dir() else shutil.copy)(folder / part, snapshot / part)
    return folder


def statuses(db: Path) -> list[str]:
    with sqlite3.connect(db) as connection:
        return [row[0] for row in connection.execute("select status from runs")]


@pytest.fixture
def killed_run(killed_after_task_1, request, monkeypatch, capsys):
    """``(argv, run folder, store)``: the killed run restored from its snapshot, and the command that resumes it.

    Each test has its own copy of the store (a new URI): MLflow keeps a connection to each database it opened.
    """
    folder = killed_after_task_1
    for part in KILLED_PARTS:
        target = folder / part
        shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
        shutil.copytree(folder / "snapshot" / part, target)
    db = folder / f"mlflow-{len(list(folder.glob('mlflow-*.db')))}.db"
    shutil.copy(folder / "snapshot" / "mlflow.db", db)
    monkeypatch.chdir(folder)
    capsys.readouterr()
    (run_folder,) = {p.parent for p in (folder / "runs").rglob("state.json")}
    return ["run", str(folder / "experiment.yaml"), "--tracking-uri", f"sqlite:///{db}", "--no-progress"], run_folder, db


def no_training(monkeypatch) -> None:
    """Training any task fails the test: a refusal comes before it."""
    import cl_harness.runner.run as run_module

    def train(self, state, result):
        raise AssertionError("trained a task before refusing the damaged run folder")

    monkeypatch.setattr(run_module.TrainingRun, "_train", train)


def edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def remove_json_key(path: Path, key: str) -> None:
    data = json.loads(path.read_text())
    del data[key]
    path.write_text(json.dumps(data))


def replace_with_folder(path: Path) -> None:
    path.unlink()
    path.mkdir()


def swap_labels(path: Path) -> None:
    """Every row's label becomes the other class of its task: the same class set, other targets."""
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    first, second = sorted({r["label"] for r in rows})
    path.write_text("".join(json.dumps({**r, "label": second if r["label"] == first else first}) + "\n" for r in rows))


DAMAGE = {  # what is done to the run folder, and the file the message names
    "state: one cell for 3 tasks": (lambda f: edit_json(f / "state.json", matrix=[[0.5]]), "state.json"),
    "state: a NaN row": (lambda f: edit_json(f / "state.json", matrix=[[NAN, NAN, NAN]]), "state.json"),
    "state: text for steps_done": (lambda f: edit_json(f / "state.json", steps_done="1"), "state.json"),
    "state: not JSON": (lambda f: (f / "state.json").write_text("{not json"), "state.json"),
    "state: null": (lambda f: (f / "state.json").write_text("null"), "state.json"),
    "state: empty": (lambda f: (f / "state.json").write_text(""), "state.json"),
    "checkpoint: a folder": (lambda f: replace_with_folder(f / CHECKPOINT_FILE), CHECKPOINT_FILE),
    "checkpoint: truncated": (lambda f: truncate(f / CHECKPOINT_FILE), CHECKPOINT_FILE),
    "data: test labels swapped in task 2": (lambda f: swap_labels(f.parents[3] / "data" / "t2_test.jsonl"), "state.json"),
}


@pytest.mark.parametrize("damage", DAMAGE.values(), ids=DAMAGE.keys())
def test_a_run_folder_damaged_after_a_kill_is_refused_before_training_and_no_run_stays_running(damage, killed_run, monkeypatch, capsys):
    from cl_harness.cli import main

    argv, folder, db = killed_run
    do, named = damage
    do(folder)
    no_training(monkeypatch)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and err.count("\n") <= 3, err
    assert str(folder / named) in err and "hint: run the same command with --restart" in err, err
    assert "RUNNING" not in statuses(db), statuses(db)


def test_edited_data_names_the_task_whose_data_changed(killed_run, capsys):
    from cl_harness.cli import main

    argv, folder, _ = killed_run
    swap_labels(folder.parents[3] / "data" / "t2_test.jsonl")
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "'t2'" in err and "'t1'" not in err and "'t3'" not in err and "changed" in err, err


@pytest.mark.parametrize("older", [False, True], ids=["with its data fingerprint", "state.json without one"])
def test_an_intact_killed_run_resumes_after_task_1(older, killed_run, capsys):
    """The control: the same command resumes the undamaged folder, also one an older version wrote (no fingerprint)."""
    from cl_harness.cli import main

    argv, folder, db = killed_run
    assert "data_sha256" in json.loads((folder / "state.json").read_text())
    if older:
        remove_json_key(folder / "state.json", "data_sha256")
    assert main(argv) == 0
    assert "resumed after task 1" in capsys.readouterr().out
    assert set(statuses(db)) == {"FINISHED"}
