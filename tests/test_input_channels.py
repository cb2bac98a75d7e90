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


# -- integers, duplicate keys, YAML 1.1 number forms and --set through a shorthand -----------------------------------
NINES = "9" * 5000  # past Python's 4,300-digit limit on int <-> str conversion


@pytest.mark.parametrize("experiment, flags, key, line", [
    (EXPERIMENT, [f"training.epochs={NINES}"], None, None),
    (EXPERIMENT, [f"seeds=[{NINES}]"], None, None),
    (EXPERIMENT + f"training:\n  epochs: {NINES}\n", [], "training.epochs", 5),
    (EXPERIMENT + f"training:\n  extra:\n    ? {NINES}\n    : 1\n", [], "training.extra", 6),
    (EXPERIMENT + f"seeds: [0, 0x{NINES}]\n", [], "seeds[1]", 4),
], ids=["set-int", "set-list", "file-int", "file-key", "file-hex"])
def test_an_integer_too_long_to_convert_is_refused_at_its_key(tmp_path, experiment, flags, key, line):
    err = config_error(write_config(tmp_path, experiment, STREAM), flags)
    assert "the integer" in err.message and "at most" in err.message and "digits" in err.message, err
    assert NINES not in str(err)
    if flags:
        assert err.origin.startswith(f"--set {flags[0].split('=')[0]}=")
    else:
        assert err.key.startswith(key) and err.line == line, err


@pytest.mark.parametrize("flag", [f"seeds.{NINES}=1", "seeds.\u00b2=1"], ids=["long", "superscript"])
def test_a_set_key_path_of_long_or_non_ascii_digits_is_not_a_crash(tmp_path, flag):
    err = config_error(write_config(tmp_path, EXPERIMENT + "seeds: [0]\n", STREAM), [flag])
    assert err.origin.startswith("--set seeds.") and "not an index" in err.message, err


def test_validate_of_a_set_integer_too_long_to_convert_exits_2_without_a_traceback(tmp_path, capsys):
    from cl_harness.cli import main

    path = write_config(tmp_path, EXPERIMENT, STREAM)
    assert main(["validate", str(path), "--set", f"training.epochs={NINES}"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "digits" in err and len(err) < 600, err


@pytest.mark.parametrize("mapping, first, second", [
    ("{0: x, 0x0: y, 1: z}", "0", "0x0"),
    ("{1: x, 1.0: y}", "1", "1.0"),
    ("{1: x, 01: y}", "1", "01"),
    ("{'1': x, 1: y}", "'1'", "1"),  # labels are text: the harness reads both as label '1'
    ("{1: x, '1': y}", "1", "'1'"),
])
def test_two_spellings_of_one_label_in_rename_labels_are_a_duplicate_key(tmp_path, mapping, first, second):
    task = "    rename_labels:\n" + "".join(f"      {item.strip()}\n" for item in mapping.strip("{}").split(","))
    stream = STREAM.replace("    classes: [sports, business]\n", "    classes: [sports, business]\n" + task, 1)
    (tmp_path / "stream.yaml").write_text(stream)
    with pytest.raises(ConfigError) as info:
        load_stream(tmp_path / "stream.yaml", {})
    err = info.value
    assert err.message.startswith(f"duplicate key {second.strip(chr(39))!r}") and "(lines 8 and 9)" in err.message, err
    assert err.line == 9 and err.key.startswith("tasks[0].rename_labels"), err


@pytest.mark.parametrize("body", [
    "training:\n  <<: {lr: 1.0e-3}\n  <<: {lr: 1.0e-2}\n",
    "base: &b {lr: 1.0e-3}\ntraining:\n  epochs: 1\n  <<: *b\n  <<: {lr: 1.0e-2}\n",
])
def test_a_second_merge_key_in_one_mapping_is_a_duplicate_key(tmp_path, body):
    err = config_error(write_config(tmp_path, EXPERIMENT + body, STREAM))
    first, second = [i + 4 for i, line in enumerate(body.splitlines()) if line.strip().startswith("<<")]
    assert f"duplicate key '<<' (lines {first} and {second})" in err.message and err.line == second, err
    assert "<<: [" in err.message or "<<: [" in (err.hint or ""), err


def test_one_merge_key_and_distinct_keys_still_load(tmp_path):
    from cl_harness.config.loader import load_experiment

    body = "training:\n  <<: {lr: 1.0e-3, epochs: 2}\n  epochs: 3\n"
    config = load_experiment(write_config(tmp_path, EXPERIMENT.replace("name: x", "name: 123") + body, STREAM), ["seeds=[0, 1]"]).config
    assert config.training.lr == 1e-3 and config.training.epochs == 3 and config.name == "123" and config.seeds == [0, 1]


@pytest.mark.parametrize("text, number", [("10:30", "630"), ("010", "8"), ("0b101", "5"), ("1_000", "1000"), ("0x1f", "31"),
                                          ("+7", "7"), ("1.50", "1.5")])
def test_a_name_written_in_a_yaml_number_form_must_be_quoted(tmp_path, text, number):
    err = config_error(write_config(tmp_path, EXPERIMENT.replace("name: x", f"name: {text}"), STREAM))
    assert err.key == "name" and err.line == 1 and text in err.message and number in err.message, err
    assert "quote" in (err.hint or ""), err
    err = config_error(write_config(tmp_path, EXPERIMENT, STREAM), [f"name={text}"])
    assert err.origin == f"--set name={text}" and number in err.message and "quote" in (err.hint or ""), err


@pytest.mark.parametrize("replace, key, line", [
    (("  - name: t2", "  - name: 010"), "tasks[1].name", 7),
    (("classes: [sports, business]", "classes: [010, 011]"), "tasks[0].classes[0]", 6),
    (("classes: [sports, business]", "classes: [sports, business]\n    rename_labels: {sports: 10:30}"), "tasks[0].rename_labels.sports", 7),
    (("classes: [sports, business]", "classes: [sports, business]\n    rename_labels: {0b1: x}"), "tasks[0].rename_labels", 7),
    (("classes: [sports, business]", "classes: [sports, business]\n    label_names: [1_0, b]"), "tasks[0].label_names[0]", 7),
    (("name: s", "name: 017"), "name", 1),
])
def test_a_task_name_class_or_label_in_a_yaml_number_form_must_be_quoted(tmp_path, replace, key, line):
    (tmp_path / "stream.yaml").write_text(STREAM.replace(*replace, 1))
    with pytest.raises(ConfigError) as info:
        load_stream(tmp_path / "stream.yaml", {})
    err = info.value
    assert err.key.startswith(key) and err.line == line and "quote" in (err.hint or ""), err


def test_plain_numbers_still_work_where_numbers_or_names_are_expected(tmp_path):
    from cl_harness.config.loader import load_experiment

    stream = STREAM.replace("name: t2", "name: 2").replace("classes: [sports, business]", "classes: [sports, business]\n    split_seed: 0x10")
    experiment = EXPERIMENT.replace("name: x", "name: 123") + "training:\n  lr: 1e-3\n  epochs: 1_0\nseeds: [0, 1]\n"
    loaded = load_experiment(write_config(tmp_path, experiment, stream), ["training.batch_size=0b100", "description=1.5"])
    config = loaded.config
    assert config.name == "123" and config.seeds == [0, 1] and config.training.lr == 1e-3 and config.training.epochs == 10
    assert config.training.batch_size == 4 and config.description == "1.5"
    assert loaded.stream.config.tasks[1].name == "2" and loaded.stream.config.tasks[0].split_seed == 16


def test_a_quoted_number_form_is_kept_as_written(tmp_path):
    from cl_harness.config.loader import load_experiment

    config = load_experiment(write_config(tmp_path, EXPERIMENT.replace("name: x", "name: '10:30'"), STREAM)).config
    assert config.name == "10:30"


def test_set_below_a_backbone_given_as_a_string_keeps_the_string_as_its_name(tmp_path):
    from cl_harness.config.loader import load_experiment

    path = write_config(tmp_path, EXPERIMENT + "backbone: some-org/some-model\n", STREAM)
    config = load_experiment(path, ["backbone.pooling=cls"]).config
    assert config.backbone.name == "some-org/some-model" and config.backbone.pooling == "cls"
    config = load_experiment(path, ["backbone=other/model", "backbone.pooling=cls"]).config
    assert config.backbone.name == "other/model" and config.backbone.pooling == "cls"
    err = config_error(path, ["backbone.pooling=max"])
    assert err.key == "backbone.pooling" and err.origin == "--set backbone.pooling=max", err



@pytest.mark.parametrize("flag, path, value", [("strategies.0.ewc_lambda=3", "strategies[0]", "'naive'"),
                                               ("training.lr.x=1", "training.lr", "0.001")])
def test_set_below_a_plain_value_is_refused_naming_the_value_not_replaced_by_a_mapping(tmp_path, flag, path, value):
    # Replaced by {ewc_lambda: 3}, the strategy entry was reported as "unknown strategy 'ewc_lambda'".
    config = EXPERIMENT + "training: {lr: 0.001}\n"
    err = config_error(write_config(tmp_path, config, STREAM), [flag])
    assert err.origin == f"--set {flag}" and f"{path} is {value}, a plain value: no key can be set below it" in err.message, err
