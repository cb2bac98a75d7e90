"""Validation splits: carved from training data only (seeded, disjoint), scored after every step, refused when too big."""

from __future__ import annotations

import json
import math

import pytest
import yaml
from conftest import write_demo_stream, write_experiment

from cl_harness.cli import main
from cl_harness.config.loader import load_stream
from cl_harness.data.tasks import load_stream_tasks
from cl_harness.errors import ConfigError


def files_stream(tmp_path, **task_keys):
    """Two tasks read from jsonl files whose every text is unique and names its split."""
    tasks = []
    for t in range(2):
        for split, n in (("train", 30), ("test", 8)):
            rows = [{"text": f"{split} task{t} row{i}", "label": ["a", "b"][i % 2]} for i in range(n)]
            (tmp_path / f"{split}{t}.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        tasks.append({"name": f"t{t}", "source": {"type": "files", "train_file": f"train{t}.jsonl", "test_file": f"test{t}.jsonl"},
                      **task_keys})
    path = tmp_path / "stream.yaml"
    path.write_text(yaml.safe_dump({"name": "files", "scenario": "task_incremental", "tasks": tasks}, sort_keys=False))
    return path


def test_valid_per_class_is_carved_from_train_only_seeded_and_disjoint(tmp_path):
    path = files_stream(tmp_path, valid_per_class=4, train_per_class=6)
    first, again = load_stream_tasks(load_stream(path)), load_stream_tasks(load_stream(path))
    for task, same in zip(first, again):
        assert [task.valid_labels.count(c) for c in (0, 1)] == [4, 4]
        assert [task.train_labels.count(c) for c in (0, 1)] == [6, 6]
        assert all(text.startswith("train ") for text in task.valid_texts)  # never from the test split
        assert not set(task.valid_texts) & set(task.train_texts) and len(task.test_texts) == 8
        assert task.valid_texts == same.valid_texts and task.train_texts == same.train_texts
    other = tmp_path / "other.yaml"
    other.write_text(path.read_text().replace("valid_per_class: 4", "valid_per_class: 4\n  split_seed: 1"))
    assert load_stream_tasks(load_stream(other))[0].valid_texts != first[0].valid_texts


def test_valid_fraction_and_no_validation(tmp_path):
    (task, _) = load_stream_tasks(load_stream(files_stream(tmp_path, valid_fraction=0.2)))
    assert len(task.valid_labels) == 6 and len(task.train_labels) == 24
    (plain, _) = load_stream_tasks(load_stream(files_stream(tmp_path)))
    assert plain.valid_labels == [] and len(plain.train_labels) == 30


def test_valid_per_class_larger_than_the_training_data_is_refused_at_its_key(tmp_path, capsys):
    path = files_stream(tmp_path, valid_per_class=15)
    with pytest.raises(ConfigError) as info:
        load_stream_tasks(load_stream(path))
    assert "valid_per_class" in str(info.value) and "15" in str(info.value)
    write_experiment(tmp_path, "unused-backbone", ["naive"])
    assert main(["validate", str(tmp_path / "experiment.yaml")]) == 2
    err = capsys.readouterr().err
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "valid_per_class" in text)
    assert f"{path}:{line}: tasks[0].valid_per_class: class 'a' has 15 training examples" in err and "Traceback" not in err


def test_both_valid_keys_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="not both"):
        load_stream(files_stream(tmp_path, valid_per_class=2, valid_fraction=0.1))


def test_a_run_logs_the_validation_matrix_beside_the_test_matrix(tmp_path, tiny_bert):
    from mlflow import MlflowClient

    stream = write_demo_stream(tmp_path, "class_incremental", per_class=16, tasks=2)
    text = stream.read_text().replace("test_examples_per_class: 10", "test_examples_per_class: 10\n  valid_per_class: 4")
    stream.write_text(text)
    experiment = write_experiment(tmp_path, tiny_bert, ["naive"])
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    assert main(["run", str(experiment), "--tracking-uri", uri, "--no-progress"]) == 0
    client = MlflowClient(tracking_uri=uri)
    (run,) = [r for r in client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
              if r.data.tags["cl_harness.role"] == "child"]
    for key in ("valid_acc/t1", "valid_acc/t2", "valid_acc/seen_avg"):
        assert sorted(m.step for m in client.get_metric_history(run.info.run_id, key)) == [0, 1, 2], key
    valid = json.loads(open(client.download_artifacts(run.info.run_id, "valid_accuracy_matrix.json", str(tmp_path))).read())
    assert valid["tasks"] == ["t1", "t2"] and len(valid["matrix"]) == 2
    assert all(v in [i / 8 for i in range(9)] for row in valid["matrix"] for v in row)  # 8 validation examples a task
    assert run.data.metrics["valid_acc"] == pytest.approx(sum(valid["matrix"][-1]) / 2)
    history = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "valid_acc/t1")}
    assert history[1] == pytest.approx(valid["matrix"][0][0])


def test_the_evaluator_scores_the_split_it_is_given_and_keeps_the_kinds_hits():
    """split="valid" hands each kind the validation examples (NaN without them); hits come back packed per task."""
    import numpy as np
    import torch

    from cl_harness.data.benchmark import EncodedTask
    from cl_harness.evaluation.evaluator import Evaluator
    from cl_harness.evaluation.flips import unpack_correct
    from cl_harness.tasks.registry import TaskKindInfo, TaskKindRegistry

    def score(model, task, env, on_batch):  # "right" where the target is 0: depends only on the split handed over
        hits = task.test_targets == 0  # (n,)
        return float(hits.float().mean()), {}, hits

    kinds = TaskKindRegistry()
    kinds.register(TaskKindInfo(name="classification", summary="", column_metric="accuracy", train=lambda step: None, score=score))
    x = torch.zeros(4, 3, 2, dtype=torch.long)  # (n, 3, length)
    with_valid = EncodedTask("a", 0, x, torch.zeros(4, dtype=torch.long), x, torch.tensor([0, 0, 0, 1]),
                             valid_inputs=x[:2], valid_targets=torch.tensor([1, 0]))
    without = EncodedTask("b", 1, x, torch.zeros(4, dtype=torch.long), x, torch.tensor([1, 1, 1, 1]))
    test_row = Evaluator([with_valid, without], kinds, env=None)(None, 0)
    valid = Evaluator([with_valid, without], kinds, env=None, split="valid")
    valid_row = valid(None, 0)
    assert test_row == [0.75, 0.0] and valid_row[0] == 0.5 and math.isnan(valid_row[1])
    assert np.array_equal(unpack_correct(valid.correct[0], 2), [False, True]) and valid.correct[1] is None
    assert valid.sizes() == [2, 0]
