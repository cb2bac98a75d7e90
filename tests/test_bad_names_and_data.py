"""Names and data values that would crash a run or reach the terminal or MLflow wrong are refused with one message at
the file, line and key: integers longer than Python converts, lone surrogates, control characters, task names and
strategy labels whose MLflow keys collide, and a parquet text column of bytes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from test_data_inputs import OTHER, refused, write_jsonl

from cl_harness.cli import main
from cl_harness.config.loader import load_experiment, load_stream
from cl_harness.config import names
from cl_harness.data.tasks import load_task
from cl_harness.errors import ConfigError
from cl_harness.grid.prepare import check_experiment
from cl_harness.tracking import schema

LIMIT = sys.get_int_max_str_digits() or 4300
HUGE = "9" * (LIMIT + 700)
def rows(n: int = 10, labels=("pos", "neg")) -> list[dict]:
    return [{"text": f"a song about the {('rain', 'album', 'airport')[i % 3]} {i}", "label": labels[i % len(labels)]} for i in range(n)]


def files_task(train: str = "train.jsonl", name: str = "first", **extra) -> dict:
    return {"name": name, "source": {"type": "files", "train_file": train}, **extra}


def stream_file(directory: Path, tasks: list[dict], name: str = "s") -> Path:
    path = directory / "stream.yaml"
    path.write_text(yaml.safe_dump({"name": name, "scenario": "class_incremental", "tasks": tasks}, sort_keys=False))
    return path


def experiment_file(directory: Path, backbone: Path, strategies=("naive",), name: str = "qa") -> Path:
    path = directory / "experiment.yaml"
    path.write_text(
        f"name: {name}\nstream: stream.yaml\nbackbone: {backbone}\ntraining: {{max_length: 24}}\n"
        f"checkpoint_dir: {directory / 'runs'}\nstrategies: {json.dumps(list(strategies))}\n"
    )
    return path


def checked_error(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        check_experiment(load_experiment(path))
    return info.value


def validate_refuses(path: Path, capsys, *where: str) -> str:
    """``cl-harness validate path`` ends with exit 2 and one short message holding ``where``, no traceback."""
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) <= 3, err
    assert "\x1b" not in err and "\udcff" not in err, err
    for part in where:
        assert part in err, err
    return err


# -- 1. integers longer than Python converts --------------------------------------------------------------------------


def test_a_too_long_integer_in_a_json_lines_row_names_the_file_line_and_field(tmp_path):
    lines = [json.dumps(item) for item in rows()]
    lines[3] = '{"text": "a text", "label": %s}' % HUGE
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    err = refused(stream_file(tmp_path, [files_task(), OTHER]))
    assert err.key == "tasks[0].source.train_file" and err.file.endswith("stream.yaml")
    assert f"train.jsonl: line 4: field 'label' is an integer of {len(HUGE)} digits; at most {LIMIT}" in err.message, err.message


def test_a_too_long_integer_in_a_json_array_names_the_line_item_and_field(tmp_path):
    lines = [json.dumps(item) for item in rows()]
    lines[5] = '{"text": "a text", "meta": {"n": -%s}, "label": "pos"}' % HUGE
    (tmp_path / "train.json").write_text("[\n" + ",\n".join(lines) + "\n]\n")
    err = refused(stream_file(tmp_path, [files_task("train.json"), OTHER]))
    assert err.key == "tasks[0].source.train_file"
    assert "train.json: line 7: item 5, field 'meta.n' is an integer of" in err.message, err.message


def test_a_too_long_integer_in_a_label_names_file_is_refused(tmp_path, capsys):
    write_jsonl(tmp_path / "train.jsonl", rows(labels=(0, 1)))
    (tmp_path / "names.json").write_text('[\n  "a",\n  %s\n]\n' % HUGE)
    path = stream_file(tmp_path, [files_task(label_names="names.json"), OTHER])
    err = refused(path)
    assert err.key == "tasks[0].label_names"
    assert "names.json: line 3: item 1 is an integer of" in err.message, err.message
    validate_refuses(path, capsys, "tasks[0].label_names", "names.json: line 3")


def test_validate_refuses_a_too_long_integer_with_exit_2(tmp_path, capsys):
    items = rows()
    write_jsonl(tmp_path / "train.jsonl", items)
    (tmp_path / "train.jsonl").write_text((tmp_path / "train.jsonl").read_text() + '{"text": "t", "label": %s}\n' % HUGE)
    validate_refuses(stream_file(tmp_path, [files_task(), OTHER]), capsys, "train.jsonl: line 11: field 'label'")


def test_long_integers_within_the_limit_still_read(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows(labels=(0, 1)))
    (tmp_path / "names.json").write_text(json.dumps(["a", int("7" * 50)]))
    task = load_task(load_stream(stream_file(tmp_path, [files_task(label_names="names.json"), OTHER]), {}), 0)
    assert task.label_names == ["a", "7" * 50]


# -- 2. lone surrogates -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
def test_a_lone_surrogate_in_a_text_is_refused_at_its_row_and_field(suffix, tmp_path):
    lines = [json.dumps(item) for item in rows()]
    lines[3] = '{"text": "broken \\ud800 text", "label": "pos"}'
    text = "[\n" + ",\n".join(lines) + "\n]\n" if suffix == ".json" else "\n".join(lines) + "\n"
    (tmp_path / f"train{suffix}").write_text(text)
    err = refused(stream_file(tmp_path, [files_task(f"train{suffix}"), OTHER]))
    assert err.key == "tasks[0].text_field"
    line = 5 if suffix == ".json" else 4
    assert f"row 3 (line {line}) of the train split" in err.message and "lone surrogate (U+D800)" in err.message, err.message
    assert f"train{suffix}" in err.message


def test_a_lone_surrogate_in_a_label_is_refused_at_its_row_and_field(tmp_path, capsys):
    lines = [json.dumps(item) for item in rows()]
    lines[6] = '{"text": "a text", "label": "pos\\udc80"}'
    (tmp_path / "train.jsonl").write_text("\n".join(lines) + "\n")
    path = stream_file(tmp_path, [files_task(), OTHER])
    err = refused(path)
    assert err.key == "tasks[0].label_field"
    assert "row 6 (line 7) of the train split" in err.message and "lone surrogate (U+DC80)" in err.message, err.message
    validate_refuses(path, capsys, "tasks[0].label_field")


def test_a_lone_surrogate_in_a_declared_label_name_is_refused_at_its_key(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows(labels=(0, 1)))
    path = stream_file(tmp_path, [files_task(label_names=["a", "b"]), OTHER])
    path.write_text(path.read_text().replace("- b", '- "b\\ud800"'))
    err = refused(path)
    assert err.key == "tasks[0].label_names[1]" and "lone surrogate" in err.message, err.message


def test_a_lone_surrogate_in_a_label_names_file_names_the_file_and_line(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows(labels=(0, 1)))
    (tmp_path / "names.json").write_text('[\n  "a",\n  "b\\ud800"\n]\n')
    err = refused(stream_file(tmp_path, [files_task(label_names="names.json"), OTHER]))
    assert err.key == "tasks[0].label_names"
    assert "names.json: line 3: item 1" in err.message and "lone surrogate" in err.message, err.message


def test_file_name_of_a_long_label_with_a_lone_surrogate_does_not_crash():
    name = names.file_name("n" * 130 + "\ud800")
    assert len(name) <= 120 and name.startswith("n" * 100)


def test_a_long_strategy_label_with_a_lone_surrogate_is_refused(tmp_path, tiny_bert, capsys):
    write_jsonl(tmp_path / "train.jsonl", rows())
    stream_file(tmp_path, [files_task(), OTHER])
    path = experiment_file(tmp_path, tiny_bert, ["naive", {"name": "n" * 130 + "X", "plugins": [{"replay": {"mem_size": 4}}]}])
    path.write_text(path.read_text().replace('X"', '\\ud800"'))
    err = checked_error(path)
    assert err.key == "strategies[1].name" and "lone surrogate" in err.message, err.message
    validate_refuses(path, capsys, "strategies[1].name")


# -- 3. task names whose MLflow keys collide --------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "taken"), [
    ("", "acc"), ("/", "acc"), (".", "acc"), ("./", "acc"), ("seen_avg", "acc/seen_avg"), ("..", None),
])
def test_a_task_name_whose_metric_key_is_a_run_metric_is_refused(name, taken, tmp_path, tiny_bert, capsys):
    write_jsonl(tmp_path / "train.jsonl", rows())
    stream = stream_file(tmp_path, [files_task(name=name), OTHER])
    path = experiment_file(tmp_path, tiny_bert)
    if taken is None:  # ".." becomes "acc/__", its own key: allowed
        assert check_experiment(load_experiment(path)).task_names[0] == ".."
        return
    err = checked_error(path)
    assert err.key == "tasks[0].name" and err.file.endswith("stream.yaml"), (err.key, err.file)
    assert f"the MLflow key {taken!r}" in err.message, err.message
    validate_refuses(path, capsys, "tasks[0].name")
    validate_refuses(stream, capsys, "tasks[0].name")  # validate of the stream file alone


def test_two_task_names_whose_metric_keys_collide_are_refused(tmp_path, tiny_bert):
    write_jsonl(tmp_path / "train.jsonl", rows())
    stream_file(tmp_path, [files_task(name="a/"), files_task(name="a")])
    err = checked_error(experiment_file(tmp_path, tiny_bert))
    assert err.key == "tasks[1].name" and "'acc/a'" in err.message and "task 0" in err.message, err.message


def test_the_schema_owns_the_per_task_keys_and_the_run_metrics():
    """valid_acc/<task> of task "" is the run's final valid_acc: every per-task prefix the schema owns is checked."""
    keys = schema.task_metric_keys("")
    assert schema.TASK_ACC_PREFIX in keys.values() and schema.VALID_ACC_METRIC in keys.values()
    assert set(schema.TASK_METRIC_PREFIXES) >= {"acc", "valid_acc", "probe_acc", "em", "pppl", "penalty_share"}
    assert {"acc", "valid_acc", "penalty_share", "nfr", "acc/seen_avg"} <= schema.RUN_METRICS


def test_ordinary_task_names_pass(tmp_path, tiny_bert):
    write_jsonl(tmp_path / "train.jsonl", rows())
    stream_file(tmp_path, [files_task(name="café reviews"), OTHER])
    assert check_experiment(load_experiment(experiment_file(tmp_path, tiny_bert))).task_names == ["café reviews", "other"]


# -- 4. strategy labels whose summary keys collide --------------------------------------------------------------------


def test_two_strategy_labels_with_one_summary_key_are_refused(tmp_path, tiny_bert, capsys):
    write_jsonl(tmp_path / "train.jsonl", rows())
    stream_file(tmp_path, [files_task(), OTHER])
    path = experiment_file(tmp_path, tiny_bert, ["naive", {"name": "naive/", "plugins": [{"replay": {"mem_size": 4}}]}])
    err = checked_error(path)
    assert err.key == "strategies[1]" and "'summary/acc/naive'" in err.message and "'naive'" in err.message, err.message
    validate_refuses(path, capsys, "strategies[1]")


def test_a_strategy_label_that_no_key_keeps_is_refused(tmp_path, tiny_bert):
    write_jsonl(tmp_path / "train.jsonl", rows())
    stream_file(tmp_path, [files_task(), OTHER])
    err = checked_error(experiment_file(tmp_path, tiny_bert, ["naive", {"name": "/", "plugins": [{"replay": {"mem_size": 4}}]}]))
    assert err.key == "strategies[1]" and "'summary/acc'" in err.message, err.message


# -- 5. and 6. one rule for every printed or logged name --------------------------------------------------------------


def test_an_experiment_name_from_a_variable_of_non_utf8_bytes_is_refused(tmp_path, tiny_bert, capsys, monkeypatch):
    monkeypatch.setenv("XN", "qa\udcffb")  # os.environ holds the byte 0xff as a surrogate escape
    write_jsonl(tmp_path / "train.jsonl", rows())
    stream_file(tmp_path, [files_task(), OTHER])
    path = experiment_file(tmp_path, tiny_bert, name="${XN}")
    err = checked_error(path)
    assert err.key == "name" and "lone surrogate (U+DCFF)" in err.message, err.message
    validate_refuses(path, capsys, f"{path}:1: name: ")


@pytest.mark.parametrize("name", ["qa\x7fb", "qa\x9b31mb", "qa\u2028b"])
def test_an_experiment_name_with_other_control_characters_is_refused(name, tmp_path, tiny_bert):
    write_jsonl(tmp_path / "train.jsonl", rows())
    stream_file(tmp_path, [files_task(), OTHER])
    path = experiment_file(tmp_path, tiny_bert, name=json.dumps(name))
    err = checked_error(path)
    assert err.key == "name" and "control character" in err.message, err.message


@pytest.mark.parametrize("name", ["red\x1b[31m", "two\nlines", "tab\there"])
def test_a_task_name_with_control_characters_is_refused(name, tmp_path, tiny_bert, capsys):
    write_jsonl(tmp_path / "train.jsonl", rows())
    stream = stream_file(tmp_path, [files_task(name=name), OTHER])
    err = checked_error(experiment_file(tmp_path, tiny_bert))
    assert err.key == "tasks[0].name" and "control character (U+" in err.message, err.message
    validate_refuses(stream, capsys, "tasks[0].name", "control character")


@pytest.mark.parametrize("entry", [{"name": "a\nb", "plugins": [{"replay": {"mem_size": 4}}]}, {"name": "\x1b[2Jx"}])
def test_a_strategy_label_with_control_characters_is_refused(entry, tmp_path, tiny_bert, capsys):
    write_jsonl(tmp_path / "train.jsonl", rows())
    stream_file(tmp_path, [files_task(), OTHER])
    entry = {**entry, "plugins": entry.get("plugins", [{"replay": {"mem_size": 4}}])}
    path = experiment_file(tmp_path, tiny_bert, ["naive", entry])
    err = checked_error(path)
    assert err.key == "strategies[1].name" and "control character" in err.message, err.message
    validate_refuses(path, capsys, "strategies[1].name")


def test_a_stream_name_with_control_characters_is_refused(tmp_path, capsys):
    write_jsonl(tmp_path / "train.jsonl", rows())
    stream = stream_file(tmp_path, [files_task(), OTHER], name="s\x1b[0m")
    validate_refuses(stream, capsys, f"{stream}:1: name: ", "control character (U+001B)")


@pytest.mark.parametrize("label", ["\x1b[31mred", "two\nlines", "nul\x00"])
def test_a_data_label_with_control_characters_is_refused_at_its_row(label, tmp_path, capsys):
    items = rows()
    items[4]["label"] = label
    write_jsonl(tmp_path / "train.jsonl", items)
    path = stream_file(tmp_path, [files_task(), OTHER])
    err = refused(path)
    assert err.key == "tasks[0].label_field" and "row 4 (line 5) of the train split" in err.message, err.message
    assert "control character" in err.message and "train.jsonl" in err.message
    validate_refuses(path, capsys, "tasks[0].label_field")


def test_a_declared_label_name_and_a_new_name_with_control_characters_are_refused(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows(labels=(0, 1)))
    err = refused(stream_file(tmp_path, [files_task(label_names=["a", "b\x1b[0m"]), OTHER]))
    assert err.key == "tasks[0].label_names[1]" and "control character (U+001B)" in err.message, err.message
    write_jsonl(tmp_path / "train.jsonl", rows())
    err = refused(stream_file(tmp_path, [files_task(rename_labels={"pos": "good\nbad"}), OTHER]))
    assert err.key == "tasks[0].rename_labels.pos" and "control character (U+000A)" in err.message, err.message


def test_class_label_names_with_control_characters_are_refused(tmp_path):
    import datasets

    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=["pos", "neg\x1b[0m"])})
    datasets.Dataset.from_list(rows(labels=(0, 1)), features=features).save_to_disk(str(tmp_path / "saved"))
    err = refused(stream_file(tmp_path, [{"name": "first", "source": {"type": "saved", "path": "saved"}}, OTHER]))
    assert err.key == "tasks[0].label_field" and "the ClassLabel names of 'label'" in err.message, err.message
    assert "item 1: the label name 'neg\\x1b[0m' holds a control character (U+001B)" in err.message, err.message


def test_texts_may_hold_newlines_and_tabs(tmp_path):
    items = rows()
    items[2]["text"] = "first line\nsecond\tline"
    write_jsonl(tmp_path / "train.jsonl", items)
    task = load_task(load_stream(stream_file(tmp_path, [files_task(), OTHER]), {}), 0)
    assert "first line\nsecond\tline" in task.train_texts + task.test_texts


def test_name_problem_is_the_one_rule():
    name_problem = names.name_problem
    assert name_problem("café Задача 🙂 a-b_c.d") is None
    assert name_problem("a\x1bb") == "holds a control character (U+001B)"
    assert name_problem("a\ud800").startswith("holds a lone surrogate (U+D800)")
    assert name_problem("a\u2029") == "holds a control character (U+2029)"


# -- 7. a parquet text column of bytes --------------------------------------------------------------------------------


def test_a_parquet_text_column_of_bytes_is_called_bytes(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": [b"song", b"rain"] * 5, "label": ["a", "b"] * 5}), tmp_path / "train.parquet")
    err = refused(stream_file(tmp_path, [files_task("train.parquet"), OTHER]))
    assert err.key == "tasks[0].text_field"
    assert "hold bytes instead of text in 'text'" in err.message and "null" not in err.message, err.message



def test_a_users_value_quoted_in_a_message_cannot_drive_the_terminal():
    """Every user string a ConfigError quotes (key, message, hint) is clipped, and clipping escapes control characters and
    lone surrogates: a key holding an ANSI sequence prints as text."""
    from cl_harness.errors import ConfigError

    error = ConfigError("unknown label \x1b[31mred\x1b[0m", key="rename_labels.\x1b[2J", hint="\ud800 is not text")
    printed = str(error)
    assert "\x1b" not in printed and "\ud800" not in printed
    assert "rename_labels.\\x1b[2J" in printed and "unknown label \\x1b[31mred\\x1b[0m" in printed and "\\ud800 is not text" in printed
