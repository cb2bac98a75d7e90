"""Every input channel goes through the same guards: ``--set`` values, environment variables, label-name files and data
files are held to the limits of YAML files (alias expansion, nesting, size, duplicate keys), and long texts are valid
in CSV as they are in JSON lines."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml

from cl_harness.config.guard import MAX_DEPTH, MAX_YAML_BYTES, MAX_YAML_NODES
from cl_harness.config.loader import load_stream
from cl_harness.data.tasks import load_task
from cl_harness.errors import ConfigError
from conftest import config_error, write_config

STREAM = """\
name: s
scenario: class_incremental
tasks:
  - name: t1
    source: {type: demo, train_examples_per_class: 4, test_examples_per_class: 2}
    classes: [sports, business]
  - name: t2
    source: {type: demo, train_examples_per_class: 4, test_examples_per_class: 2}
    classes: [world, sci_tech]
"""
EXPERIMENT = "name: x\nstream: stream.yaml\nstrategies: [naive]\n"
OTHER = {"name": "other", "source": {"type": "demo", "seed": 1, "train_examples_per_class": 4, "test_examples_per_class": 2},
         "classes": ["music", "weather"]}


def bomb(levels: int, width: int = 9) -> str:
    """A YAML flow mapping whose last alias expands to ``width ** levels`` values."""
    items = [f'l0: &l0 [{", ".join(["x"] * width)}]']
    items += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "{" + ", ".join(items) + "}"


def data_stream(directory: Path, train: str, **extra) -> Path:
    task = {"name": "first", "source": {"type": "files", "train_file": train}, **extra}
    path = directory / "stream.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "scenario": "class_incremental", "tasks": [task, OTHER]}, sort_keys=False))
    return path


def first_task_error(stream: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_task(load_stream(stream, {}), 0)
    return info.value


# -- the same limits on --set values and variables as on files ------------------------------------------------------


def test_set_values_share_one_expansion_budget(tmp_path):
    """Each flag alone stays under the limit; together they would not (a bomb cut in pieces)."""
    path = write_config(tmp_path, EXPERIMENT, STREAM)
    piece = bomb(5)  # 9**5 = 59,049 values
    assert 9**5 < MAX_YAML_NODES < 4 * 9**5
    err = config_error(path, [f"training.extra{i}={piece}" for i in range(4)])
    assert err.origin.startswith("--set training.extra") and "expands to more than" in err.message


def test_a_set_value_nested_past_the_stack_is_refused(tmp_path):
    path = write_config(tmp_path, EXPERIMENT, STREAM)
    err = config_error(path, ["training.extra=" + "{a: " * 5000 + "1" + "}" * 5000])
    assert err.origin.startswith("--set training.extra") and f"nested more than {MAX_DEPTH} levels deep" in err.message


def test_a_set_key_path_deeper_than_a_file_may_nest_is_refused(tmp_path):
    path = write_config(tmp_path, EXPERIMENT, STREAM)
    err = config_error(path, [".".join(["a"] * (MAX_DEPTH + 5)) + "=1"])
    assert f"at most {MAX_DEPTH} are allowed" in err.message


def test_a_variable_repeated_through_an_alias_cannot_grow_the_config(tmp_path, monkeypatch):
    monkeypatch.setenv("LONG", "y" * 100_000)
    experiment = EXPERIMENT + 'training:\n  extra: &one ["${LONG}", "${LONG}", "${LONG}", "${LONG}", "${LONG}"]\n  more: [*one, *one, *one, *one]\n'
    err = config_error(write_config(tmp_path, experiment, STREAM))
    assert f"expand the config past {MAX_YAML_BYTES} characters" in err.message and "${LONG}" in err.message


def test_an_ordinary_variable_and_set_value_still_work(tmp_path, monkeypatch):
    from cl_harness.config.loader import load_experiment

    monkeypatch.setenv("EPOCHS_NOTE", "three")
    experiment = EXPERIMENT + "tracking:\n  experiment: run-${EPOCHS_NOTE}\n"
    loaded = load_experiment(write_config(tmp_path, experiment, STREAM), ["seeds=[0, 1]", "training.epochs=3"])
    assert loaded.config.seeds == [0, 1] and loaded.config.training.epochs == 3
    assert loaded.config.tracking.experiment == "run-three"


# -- side files and data files ----------------------------------------------------------------------------------------


def test_a_label_names_file_of_deeply_nested_objects_is_refused(tmp_path):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": f"t {i}", "label": i % 2}) + "\n" for i in range(8)))
    (tmp_path / "names.json").write_text('{"a": ' * 100_000 + "1" + "}" * 100_000)
    err = first_task_error(data_stream(tmp_path, "train.jsonl", label_names="names.json"))
    assert err.key == "tasks[0].label_names" and "names.json" in err.message and "nested more than" in err.message


def test_a_label_names_file_larger_than_a_config_file_is_refused(tmp_path):
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"text": f"t {i}", "label": i % 2}) + "\n" for i in range(8)))
    (tmp_path / "names.json").write_text(json.dumps(["a", "b"] + ["pad" * 100] * (MAX_YAML_BYTES // 300)))
    err = first_task_error(data_stream(tmp_path, "train.jsonl", label_names="names.json"))
    assert err.key == "tasks[0].label_names" and f"at most {MAX_YAML_BYTES}" in err.message


def test_a_data_file_of_deeply_nested_arrays_is_refused(tmp_path):
    (tmp_path / "train.json").write_text("[" * 50_000 + "]" * 50_000)
    err = first_task_error(data_stream(tmp_path, "train.json"))
    assert err.key == "tasks[0].source.train_file" and "train.json" in err.message and "nested more than" in err.message


# -- duplicate keys and columns outside YAML --------------------------------------------------------------------------


def test_a_key_twice_in_one_object_of_a_json_array_names_the_line_and_key(tmp_path):
    items = [{"text": f"row {i}", "label": "pos" if i % 2 else "neg"} for i in range(6)]
    text = json.dumps(items, indent=2).replace('"text": "row 3"', '"text": "row 3",\n    "text": "row three"')
    (tmp_path / "train.json").write_text(text)
    opening = text.rfind("{", 0, text.index('"text": "row 3"'))  # the object holding the key twice opens here
    err = first_task_error(data_stream(tmp_path, "train.json"))
    assert err.key == "tasks[0].source.train_file"
    assert f"train.json: line {text.count(chr(10), 0, opening) + 1}: duplicate key 'text'" in err.message, err.message


def test_a_key_twice_in_a_json_lines_row_names_its_line(tmp_path):
    lines = [json.dumps({"text": f"t {i}", "label": "pos" if i % 2 else "neg"}) for i in range(6)]
    lines[4] = '{"text": "one", "label": "pos", "text": "two"}'
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    err = first_task_error(data_stream(tmp_path, "train.jsonl"))
    assert "train.jsonl: line 5: duplicate key 'text'" in err.message, err.message


def test_a_csv_header_that_names_a_column_twice_is_refused(tmp_path):
    (tmp_path / "train.csv").write_text("text,label,text\n" + "".join(f"a {i},pos,b {i}\n" for i in range(6)))
    err = first_task_error(data_stream(tmp_path, "train.csv"))
    assert err.key == "tasks[0].source.train_file"
    assert "train.csv: line 1: the header names the column 'text' twice" in err.message, err.message


# -- long texts ------------------------------------------------------------------------------------------------------


def test_a_csv_text_longer_than_the_csv_modules_default_limit_is_read(tmp_path):
    default = csv.field_size_limit()
    long_text = "a quoted, long\ntext " + "word, " * 60_000  # ~360 kB with commas and a line break inside quotes
    rows = [(f"short {i}", "pos" if i % 2 else "neg") for i in range(8)] + [(long_text, "pos")]
    with (tmp_path / "train.csv").open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    task = load_task(load_stream(data_stream(tmp_path, "train.csv"), {}), 0)
    assert long_text in task.train_texts + task.test_texts
    assert csv.field_size_limit() == default  # the limit is raised for the read only
