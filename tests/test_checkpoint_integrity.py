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
