"""Damaged or outdated run-folder files: every one is written atomically and read through one guarded reader, so a
damaged one is one message naming it and ``--restart``; a checkpoint that no longer fits the config says what changed."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml
from conftest import write_experiment

from cl_harness.cli import main
from cl_harness.data.demo import DEMO_LABELS, generate_demo_rows
from cl_harness.errors import ConfigError
from cl_harness.runner.checkpoint import RESTART_HINT, load_model_state, read_run_file, write_run_file

DAMAGES = {
    "cut": b'{"parent_run_id": "0123", "ru',
    "empty": b"",
    "not text": b"\xff\xfe\x00binary\x00",
    "a list": b'["0123", "naive/seed0/order0"]',
    "a key twice": b'{"parent_run_id": "0123", "parent_run_id": "4567"}',
    "nested past the limit": b'{"a": ' * 3000 + b"1" + b"}" * 3000,
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
@pytest.mark.parametrize("name", ["search.json", "best_params.yaml"])
def test_a_damaged_run_file_is_one_error_naming_it_and_restart(damage, name, tmp_path):
    path = tmp_path / name
    path.write_bytes(DAMAGES[damage])
    with pytest.raises(ConfigError) as info:
        read_run_file(path)
    assert info.value.file == str(path) and info.value.hint == RESTART_HINT
    assert info.value.message.startswith("the file is damaged (") and len(str(info.value)) < 400


def test_run_files_are_written_whole_and_read_back(tmp_path):
    data = {"matrix": [[0.5, float("nan")]], "name": "naive/seed0/order0"}
    for name in ("state.json", "best_params.yaml"):
        write_run_file(tmp_path / name, data)
        back = read_run_file(tmp_path / name)
        assert back["name"] == data["name"] and back["matrix"][0][0] == 0.5 and math.isnan(back["matrix"][0][1])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best_params.yaml", "state.json"]  # no temporary file left


def test_weights_that_do_not_fit_name_the_parameter_and_leave_the_model_as_it_was():
    model = torch.nn.Sequential(torch.nn.Linear(4, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=r"parameter '0.bias' is not in the checkpoint") as info:
        load_model_state(model, {"0.weight": torch.zeros(3, 4)})
    assert info.value.hint == RESTART_HINT
    with pytest.raises(ConfigError, match=r"'0.weight' has shape \[2, 4\] in the checkpoint, \[3, 4\] now"):
        load_model_state(model, {"0.weight": torch.zeros(2, 4), "0.bias": torch.zeros(3)})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    load_model_state(model, {"0.weight": torch.ones(3, 4), "0.bias": torch.ones(3)})
    assert torch.equal(model[0].weight, torch.ones(3, 4))


def write_topic_files(folder, name: str, topics: list[str], seed: int) -> dict:
    """A files task of demo rows of ``topics`` (its classes are read from the data)."""
    for split in ("train", "test"):
        rows = generate_demo_rows(topics, 6, seed, split)
        (folder / f"{name}_{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return {"name": name, "source": {"type": "files", "train_file": f"{name}_train.jsonl", "test_file": f"{name}_test.jsonl"}}


def test_a_run_resumed_after_a_task_lost_a_class_says_so_and_restart_runs_the_grid_again(tmp_path, tiny_bert, monkeypatch, capsys):
    from test_checkpoint_integrity import checkpoints_recorded_and_one_stop_before_the_outcome

    tasks = [write_topic_files(tmp_path, "t1", list(DEMO_LABELS[:3]), 0), write_topic_files(tmp_path, "t2", list(DEMO_LABELS[3:5]), 1),
             write_topic_files(tmp_path, "t3", list(DEMO_LABELS[5:7]), 2)]
    (tmp_path / "stream.yaml").write_text(yaml.safe_dump({"name": "files", "scenario": "class_incremental", "tasks": tasks}))
    experiment = write_experiment(tmp_path, tiny_bert, ["naive"])
    monkeypatch.chdir(tmp_path)
    argv = ["run", str(experiment), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--no-progress"]
    checkpoints_recorded_and_one_stop_before_the_outcome(monkeypatch)
    assert main(argv) == 130  # stopped with a checkpoint after task 2
    capsys.readouterr()

    write_topic_files(tmp_path, "t1", list(DEMO_LABELS[:2]), 0)  # the data now has one class fewer in task 1
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err and "--restart" in err, err
    # every task's label units moved with the lost class: the tokenised data of each differs from the checkpointed run's
    assert "state.json: the data of tasks 't1', 't2', 't3' changed since this run was checkpointed" in err, err

    assert main([*argv, "--restart"]) == 0
    assert "1 of 1 run finished" in capsys.readouterr().out


def test_a_grid_file_that_holds_no_mapping_stops_the_run_with_one_message(tmp_path, tiny_bert, monkeypatch, capsys):
    from conftest import write_demo_stream

    write_demo_stream(tmp_path, per_class=4)
    experiment = write_experiment(tmp_path, tiny_bert, ["naive"])
    monkeypatch.chdir(tmp_path)
    argv = ["run", str(experiment), "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db", "--no-progress"]
    assert main(argv) == 0
    (marker,) = (tmp_path / "runs").rglob("grid.json")
    marker.write_text('["a parent run id", "and the runs"]\n')
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {marker}: the file is damaged (it holds") and "--restart" in err and "Traceback" not in err, err
