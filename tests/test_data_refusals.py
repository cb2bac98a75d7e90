"""Tasks whose results would mean nothing are refused at load, with one message naming the key: a task-incremental task of
one class, a label read from the text field, a test file that is the train file, a YAML true/false or null where a label
name is written, labels that read alike but are written differently; and the wording of a few label messages."""

from __future__ import annotations

import os
import unicodedata
from pathlib import Path

import pytest
from test_data_inputs import OTHER, files_task, refused, rows, stream_file, write_jsonl

from cl_harness.config.instruction import InstructionConfig
from cl_harness.config.loader import load_stream
from cl_harness.config.yaml_io import Source
from cl_harness.data.instruction import label_texts
from cl_harness.data.tasks import TaskData, load_stream_tasks, load_task
from cl_harness.errors import ConfigError

COMPOSED, DECOMPOSED = "caf\u00e9", unicodedata.normalize("NFD", "caf\u00e9")


def refused_at_load(path: Path) -> ConfigError:
    """The ConfigError that loading the stream file itself raises."""
    with pytest.raises(ConfigError) as info:
        load_stream(path, {})
    return info.value


# -- 1. a task of one class ------------------------------------------------------------------------------------------


def test_a_task_incremental_task_of_one_class_is_refused(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows(labels=("pos",)))
    err = refused(stream_file(tmp_path, [files_task("train.jsonl"), OTHER], scenario="task_incremental"))
    assert err.key == "tasks[0]"
    assert err.message == "a task_incremental task needs at least 2 classes; its train split has 1 (pos)"


def test_a_task_incremental_task_kept_to_one_class_is_refused_at_classes(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows())
    err = refused(stream_file(tmp_path, [files_task("train.jsonl", classes=["pos"]), OTHER], scenario="task_incremental"))
    assert err.key == "tasks[0].classes" and "needs at least 2 classes" in err.message


def test_a_one_class_task_beside_others_in_a_domain_stream_passes(tmp_path):
    """The shared head spans the stream's labels: a task of one of them is still scored against the others."""
    write_jsonl(tmp_path / "one.jsonl", rows(labels=("pos",)))
    write_jsonl(tmp_path / "two.jsonl", rows())
    tasks = [files_task("one.jsonl"), files_task("two.jsonl", name="second")]
    loaded = load_stream_tasks(load_stream(stream_file(tmp_path, tasks, scenario="domain_incremental"), {}))
    assert [task.label_names for task in loaded] == [["pos"], ["neg", "pos"]]


def test_a_domain_stream_that_trains_one_class_in_all_is_refused(tmp_path):
    write_jsonl(tmp_path / "one.jsonl", rows(labels=("pos",)))
    tasks = [files_task("one.jsonl"), files_task("one.jsonl", name="second")]
    stream = load_stream(stream_file(tmp_path, tasks, scenario="domain_incremental"), {})
    with pytest.raises(ConfigError, match="train 1 class in all") as info:
        load_stream_tasks(stream)
    assert info.value.key == "tasks[0]"


# -- 2. the label read from a text field -----------------------------------------------------------------------------


@pytest.mark.parametrize(("text_field", "label_field", "which"), [
    ("text", "text", "text_field"),
    (["premise", "hypothesis"], "hypothesis", "text_field[1]"),
])
def test_a_label_field_that_is_a_text_field_is_refused(text_field, label_field, which, tmp_path):
    task = files_task("train.jsonl", text_field=text_field, label_field=label_field)
    path = stream_file(tmp_path, [task, OTHER])
    err = refused_at_load(path)
    assert err.key == "tasks[0].label_field" and err.line == path.read_text().splitlines().index(f"  label_field: {label_field}") + 1
    assert err.message.startswith(f"label_field {label_field!r} is also {which}; the label and the text must come")


def test_a_sentence_pair_of_one_field_twice_is_refused(tmp_path):
    err = refused_at_load(stream_file(tmp_path, [files_task("train.jsonl", text_field=["text", "text"]), OTHER]))
    assert err.key == "tasks[0].text_field[1]" and "text_field[0] again" in err.message


# -- 3. a test split that is the train split -------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["train.jsonl", "./sub/../train.jsonl", "absolute", "link.jsonl"])
def test_a_test_file_that_is_the_train_file_is_refused(spelling, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows())
    (tmp_path / "sub").mkdir()
    os.symlink(tmp_path / "train.jsonl", tmp_path / "link.jsonl")
    test = str(tmp_path / "train.jsonl") if spelling == "absolute" else spelling
    err = refused(stream_file(tmp_path, [files_task("train.jsonl", test), OTHER]))
    assert err.key == "tasks[0].source.test_file"
    assert "test_file is the same file as train_file" in err.message and "tested on its training rows" in err.message


@pytest.mark.parametrize("kind", ["hub", "saved"])
def test_a_test_split_that_is_the_train_split_is_refused(kind, tmp_path):
    source = {"type": kind, "train_split": "train", "test_split": "train", **({"name": "x"} if kind == "hub" else {"path": "d"})}
    err = refused_at_load(stream_file(tmp_path, [{"name": "first", "source": source}, OTHER]))
    assert err.key == "tasks[0].source.test_split" and "is also train_split" in err.message


def test_a_test_split_that_repeats_train_texts_is_warned_about(tmp_path, capsys):
    write_jsonl(tmp_path / "train.jsonl", rows(20))
    write_jsonl(tmp_path / "test.jsonl", rows(4) + rows(4, prefix="held out text"))
    task = load_task(load_stream(stream_file(tmp_path, [files_task("train.jsonl", "test.jsonl"), OTHER]), {}), 0)
    assert len(task.test_texts) == 8
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: ") and "tasks[0]: 4 of 8 test texts (50%) are also train" in err


def test_a_disjoint_test_split_is_not_warned_about(tmp_path, capsys):
    write_jsonl(tmp_path / "train.jsonl", rows(20))
    write_jsonl(tmp_path / "test.jsonl", rows(8, prefix="held out text"))
    load_task(load_stream(stream_file(tmp_path, [files_task("train.jsonl", "test.jsonl"), OTHER]), {}), 0)
    assert capsys.readouterr().err == ""


# -- 4. YAML 1.1 booleans where a label name is written ---------------------------------------------------


def yaml_stream(directory: Path, task_line: str) -> Path:
    """A stream file (written as text: the YAML words stay unquoted) whose first task carries ``task_line`` (line 5)."""
    path = directory / "stream.yaml"
    path.write_text(
        "name: s\nscenario: task_incremental\ntasks:\n"
        "  - name: first\n"
        f"    {task_line}\n"
        "    source: {type: files, train_file: train.jsonl}\n"
        "  - {name: other, source: {type: demo, seed: 1, train_examples_per_class: 4, test_examples_per_class: 2}}\n"
    )
    return path


@pytest.mark.parametrize(("word", "value"), [("yes", "true"), ("off", "false"), ("true", "true"), ("No", "false")])
@pytest.mark.parametrize("mapping", ["rename_labels", "instruction: {label_texts"])
def test_a_yaml_boolean_word_as_a_label_key_must_be_quoted(mapping, word, value, tmp_path):
    line = f"rename_labels: {{{word}: positive}}" if mapping == "rename_labels" else f"instruction: {{label_texts: {{{word}: p}}}}"
    err = refused_at_load(yaml_stream(tmp_path, line))
    keys = "rename_labels" if mapping == "rename_labels" else "instruction.label_texts"
    assert err.key == f"tasks[0].{keys}.{word}" and err.line == 5, err
    assert err.message.startswith(f"YAML reads {word} as a boolean, {value}; this key is text") and f'"{word}"' in err.hint


@pytest.mark.parametrize("line", ["classes: [yes, no]", "label_names: [on, off]", "rename_labels: {pos: yes}"])
def test_a_yaml_boolean_word_as_a_label_must_be_quoted(line, tmp_path):
    err = refused_at_load(yaml_stream(tmp_path, line))
    word = line.split("[")[-1].split(",")[0] if "[" in line else "yes"
    assert err.line == 5 and f"YAML reads {word} as a boolean" in err.message and f"not as the text '{word}'" in err.message, err
    assert err.hint == f'quote it to keep it as written: "{word}"'


def test_a_quoted_yes_and_a_key_written_as_true_itself_are_labels(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows(labels=("yes", "True")))
    task = load_task(load_stream(yaml_stream(tmp_path, "rename_labels: {'yes': agree, True: right}"), {}), 0)
    assert task.label_names == ["right", "agree"]


# -- 5. labels that read alike but are written differently ------------------------------------------------------------


def test_labels_that_differ_in_unicode_normalisation_across_splits_are_refused(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows(labels=(COMPOSED, "neg")))
    write_jsonl(tmp_path / "test.jsonl", rows(4, labels=(DECOMPOSED, "neg"), prefix="held out"))
    err = refused(stream_file(tmp_path, [files_task("train.jsonl", "test.jsonl"), OTHER]))
    assert err.key == "tasks[0].label_field" and "NFC" in err.hint
    assert "'caf\\xe9' in row 0 (line 1) of the train split" in err.message
    assert "'cafe\\u0301' in row 0 (line 1) of the test split" in err.message


def test_labels_that_differ_in_surrounding_whitespace_are_refused(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows(labels=("pos", "neg", "pos ")))
    err = refused(stream_file(tmp_path, [files_task("train.jsonl"), OTHER]))
    assert "the labels 'pos' in row 0" in err.message and "'pos ' in row 2 (line 3)" in err.message


def test_declared_label_names_that_read_alike_are_refused(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows())
    err = refused(stream_file(tmp_path, [files_task("train.jsonl", label_names=["pos", "neg", "neg "]), OTHER]))
    assert err.key == "tasks[0].label_names[2]" and "'neg' and 'neg '" in err.message


@pytest.mark.parametrize(("key", "extra"), [
    ("classes[0]", {"classes": [DECOMPOSED, "neg"]}),
    (f"rename_labels.{DECOMPOSED}", {"rename_labels": {DECOMPOSED: "coffee"}}),
])
def test_a_stream_label_that_reads_like_a_data_label_shows_both_escaped(key, extra, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows(labels=(COMPOSED, "neg")))
    err = refused(stream_file(tmp_path, [files_task("train.jsonl", **extra), OTHER]))
    assert err.key == f"tasks[0].{key}"
    assert err.message == "'cafe\\u0301' is not a label of this task; the label 'caf\\xe9' reads the same but is written differently"


def test_a_data_label_that_reads_like_a_declared_name_shows_both_escaped(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows(labels=(DECOMPOSED, "neg")))
    err = refused(stream_file(tmp_path, [files_task("train.jsonl", label_names=[COMPOSED, "neg"]), OTHER]))
    assert err.key == "tasks[0].label_names"
    assert "'cafe\\u0301' reads like the label 'caf\\xe9' but is written differently" in err.message


def test_new_names_that_read_alike_are_refused(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows())
    err = refused(stream_file(tmp_path, [files_task("train.jsonl", rename_labels={"pos": "neg "}), OTHER]))
    assert err.key == "tasks[0].rename_labels.pos" and "'neg' and 'neg '" in err.message


def test_labels_of_two_tasks_under_one_head_that_read_alike_are_refused(tmp_path):
    write_jsonl(tmp_path / "a.jsonl", rows(labels=(COMPOSED, "tea")))
    write_jsonl(tmp_path / "b.jsonl", rows(labels=(DECOMPOSED, "milk")))
    stream = load_stream(stream_file(tmp_path, [files_task("a.jsonl"), files_task("b.jsonl", name="second")]), {})
    with pytest.raises(ConfigError, match="two units") as info:
        load_stream_tasks(stream)
    assert info.value.key == "tasks[1]" and "'cafe\\u0301' of task 'second' reads like the label 'caf\\xe9'" in info.value.message


def test_a_label_text_key_that_reads_like_a_label_shows_both_escaped():
    task = TaskData("t", [COMPOSED, "neg"], ["a", "b"], [0, 1], ["c"], [0])
    with pytest.raises(ConfigError) as info:
        label_texts(task, InstructionConfig(label_texts={DECOMPOSED: "coffee"}), Source(), ("tasks", 0, "instruction"))
    assert "'cafe\\u0301' is not a label of this task; the label 'caf\\xe9'" in info.value.message


# -- 6. wording ------------------------------------------------------------------------------------------------------


def test_an_empty_label_names_list_is_refused_where_it_is_written(tmp_path):
    err = refused_at_load(stream_file(tmp_path, [files_task("train.jsonl", label_names=[]), OTHER]))
    assert err.key == "tasks[0].label_names" and err.message == "lists no label names"


@pytest.mark.parametrize(("labels", "kind", "hint"), [((True, False), "true/false values", '("yes", "no")'),
                                                      ((1.0, 2.0), "numbers", "1, not 1.0")])
def test_labels_all_of_one_kind_that_is_not_a_label_type(labels, kind, hint, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows(labels=labels))
    err = refused(stream_file(tmp_path, [files_task("train.jsonl"), OTHER]))
    assert err.message.startswith(f"the labels in 'label' are {kind} (10 rows), not strings or integers; first: row 0 (line 1)")
    assert hint in err.hint and "types" not in err.message


def test_csv_digit_labels_match_the_same_digits_written_as_strings_elsewhere(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"t {i},{i % 2}\n" for i in range(10)))
    write_jsonl(tmp_path / "test.jsonl", [{"text": f"u {i}", "label": str(i % 2)} for i in range(4)])
    task = load_task(load_stream(stream_file(tmp_path, [files_task("train.csv", "test.jsonl"), OTHER]), {}), 0)
    assert task.label_names == ["0", "1"] and task.test_labels == [0, 1, 0, 1] and task.train_labels == [0, 1] * 5
