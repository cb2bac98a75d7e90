"""Bad data and backbone inputs are refused with one message naming the file, the line or row, the key and what is
allowed: backbones without a usable tokenizer, texts that are not strings, NaN in JSON, labels of mixed types,
domain-incremental tasks without a shared label, a bad label_names or classes value, an unclosed CSV quote and a
data root that is not a folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from cl_harness.cli import main
from cl_harness.config.experiment import BackboneConfig
from cl_harness.config.loader import load_stream, make_variables
from cl_harness.config.yaml_io import Source
from cl_harness.data.tasks import load_stream_tasks, load_task
from cl_harness.errors import ConfigError
from cl_harness.models.backbone import (
    check_tokenizer_covers,
    check_tokenizer_matches,
    load_model_config,
    load_tokenizer,
    resolve_backbone,
)

OTHER = {"name": "other", "source": {"type": "demo", "seed": 1, "train_examples_per_class": 4, "test_examples_per_class": 2},
         "classes": ["music", "weather"]}


def rows(n: int = 10, labels=("pos", "neg"), prefix: str = "sample text number") -> list[dict]:
    return [{"text": f"{prefix} {i}", "label": labels[i % len(labels)]} for i in range(n)]


def write_jsonl(path: Path, items: list[dict]) -> Path:
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return path


def stream_file(directory: Path, tasks: list[dict], scenario: str = "class_incremental") -> Path:
    path = directory / "stream.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "scenario": scenario, "tasks": tasks}, sort_keys=False))
    return path


def files_task(train: str, test: str | None = None, name: str = "first", **extra) -> dict:
    source = {"type": "files", "train_file": train, **({"test_file": test} if test else {})}
    return {"name": name, "source": source, **extra}


def refused(path: Path, index: int = 0, variables=None) -> ConfigError:
    """The ConfigError that reading task ``index`` of the stream file raises."""
    stream = load_stream(path, variables or {})
    with pytest.raises(ConfigError) as info:
        for i in range(index + 1):
            load_task(stream, i)
    return info.value


# -- 1. a backbone without a usable tokenizer ------------------------------------------------------------------------


def model_without_tokenizer(tiny_bert: Path, directory: Path) -> Path:
    directory.mkdir()
    for item in tiny_bert.iterdir():
        if item.name == "config.json" or item.suffix in (".safetensors", ".bin"):
            shutil.copy(item, directory / item.name)
    return directory


def test_a_backbone_folder_without_tokenizer_files_is_refused(tiny_bert, tmp_path):
    folder = model_without_tokenizer(tiny_bert, tmp_path / "no_tokenizer")
    with pytest.raises(ConfigError, match="has no tokenizer files") as info:
        load_tokenizer(BackboneConfig(name=str(folder)))
    assert info.value.key == "backbone.name" and "tokenizer.json, vocab.txt" in info.value.message
    load_model_config(BackboneConfig(name=str(folder)))  # the model itself is fine


def test_validate_refuses_a_backbone_without_tokenizer_files(tiny_bert, tmp_path, capsys):
    folder = model_without_tokenizer(tiny_bert, tmp_path / "no_tokenizer")
    stream_file(tmp_path, [files_task("train.jsonl", test=None), OTHER])
    write_jsonl(tmp_path / "train.jsonl", rows())
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(f"name: e\nstream: stream.yaml\nbackbone: {folder}\ntraining: {{max_length: 24}}\n")
    assert main(["validate", str(experiment)]) == 2
    err = capsys.readouterr().err
    assert "has no tokenizer files" in err and "Traceback" not in err, err


def test_a_tokenizer_of_special_tokens_only_is_refused(tiny_bert, tmp_path):
    from transformers import BertTokenizer

    folder = model_without_tokenizer(tiny_bert, tmp_path / "specials_only")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    BertTokenizer(vocab={token: i for i, token in enumerate(specials)}).save_pretrained(folder)
    with pytest.raises(ConfigError, match="no vocabulary besides its 5 special tokens"):
        load_tokenizer(BackboneConfig(name=str(folder)))


def test_a_tokenizer_that_maps_the_streams_texts_to_unknown_is_refused(tiny_bert):
    tokenizer = load_tokenizer(BackboneConfig(name=str(tiny_bert)))  # word-level, demo words only: still accepted
    check_tokenizer_covers(tokenizer, ["the match was won", ("the soup", "the oven")], "tiny")
    strange = [f"zzyzx qwxv {i}kq" for i in range(200)]
    with pytest.raises(ConfigError, match="maps every token of 64 texts of the stream to its unknown token"):
        check_tokenizer_covers(tokenizer, strange, "tiny")
    config = load_model_config(BackboneConfig(name=str(tiny_bert)))
    check_tokenizer_matches(tokenizer, config, "tiny")  # the embedding-size check alone


# -- 2. backbone names: unknown bundled name, a file, and file:line --------------------------------------------------


def test_an_unknown_bundled_backbone_lists_the_available_ones():
    with pytest.raises(ConfigError, match="unknown bundled backbone 'bundled:all-MiniLM-L12-v2'; available: "
                                          "bundled:all-MiniLM-L6-v2") as info:
        resolve_backbone("bundled:all-MiniLM-L12-v2")
    assert "unreachable" not in str(info.value) and "Repo id" not in str(info.value)


def test_a_file_as_backbone_is_not_a_model_directory(tmp_path):
    (tmp_path / "stream.yaml").write_text("name: s\n")
    with pytest.raises(ConfigError, match="is a file, not a model directory"):
        load_tokenizer(BackboneConfig(name=str(tmp_path / "stream.yaml")))
    with pytest.raises(ConfigError, match="no such directory"):
        load_model_config(BackboneConfig(name=str(tmp_path / "absent")))


@pytest.mark.parametrize("name", ["bundled:nope", "FILE", "/no/such/folder"])
def test_backbone_errors_carry_the_experiment_file_and_line(name, tmp_path):
    (tmp_path / "stream.yaml").write_text("name: s\n")
    name = str(tmp_path / "stream.yaml") if name == "FILE" else name
    source = Source(str(tmp_path / "experiment.yaml"), {("backbone",): 4})  # shorthand `backbone: name` on line 4
    with pytest.raises(ConfigError) as info:
        with source.locating():
            load_tokenizer(BackboneConfig(name=name))
    assert str(info.value).startswith(f"{tmp_path / 'experiment.yaml'}:4: backbone.name: "), str(info.value)


def test_validate_gives_backbone_errors_their_line_and_refuses_a_tokenizer_that_knows_no_text(tiny_bert, tmp_path, capsys):
    """check_experiment passes the experiment's source and a sample of the stream's texts to the backbone checks."""
    stream_file(tmp_path, [files_task("train.jsonl", test=None), OTHER])
    write_jsonl(tmp_path / "train.jsonl", [{"text": f"zzyzx qwxv {i}kq", "label": ("pos", "neg")[i % 2]} for i in range(10)])
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(f"name: e\nstream: stream.yaml\nbackbone: {tiny_bert}\ntraining: {{max_length: 24}}\n")
    assert main(["validate", str(experiment)]) == 2
    err = capsys.readouterr().err
    assert f"{experiment}:3: backbone.name: " in err and "texts of task 'first' to its unknown token" in err and "Traceback" not in err, err
    experiment.write_text("name: e\nstream: stream.yaml\nbackbone: bundled:nope\n")
    assert main(["validate", str(experiment)]) == 2
    assert f"{experiment}:3: backbone.name: unknown bundled backbone" in capsys.readouterr().err


# -- 3. texts that are not strings, NaN and Infinity -----------------------------------------------------------------


@pytest.mark.parametrize("value", [42, 1.5, True])
def test_a_text_that_is_not_a_string_is_refused(value, tmp_path):
    items = rows()
    items[3]["text"] = value
    write_jsonl(tmp_path / "train.jsonl", items)
    err = refused(stream_file(tmp_path, [files_task("train.jsonl"), OTHER]))
    assert err.key == "tasks[0].text_field" and err.file.endswith("stream.yaml") and err.line == 4
    assert "instead of text in 'text' (first: row 3 (line 4)" in err.message, err.message


def test_a_csv_text_column_of_digits_stays_text(tmp_path):
    (tmp_path / "train.csv").write_text("text,label\n" + "".join(f"{i},{'pos' if i % 2 else 'neg'}\n" for i in range(10)))
    task = load_task(load_stream(stream_file(tmp_path, [files_task("train.csv"), OTHER]), {}), 0)
    assert sorted(task.train_texts + task.test_texts) == sorted(str(i) for i in range(10))


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_nan_and_infinity_in_a_data_file_are_refused(constant, suffix, tmp_path):
    lines = [json.dumps(item) for item in rows()]
    lines[5] = '{"text": %s, "label": "pos"}' % constant
    text = "[" + ",\n".join(lines) + "]\n" if suffix == ".json" else "\n".join(lines) + "\n"
    (tmp_path / f"train{suffix}").write_text(text)
    err = refused(stream_file(tmp_path, [files_task(f"train{suffix}"), OTHER]))
    assert err.key == "tasks[0].source.train_file"
    assert f"{constant} at line 6 is not valid JSON" in err.message, err.message


def test_nan_inside_a_string_is_text(tmp_path):
    items = rows()
    items[0]["text"] = "NaN is not a number, Infinity is far"
    (tmp_path / "train.json").write_text(json.dumps(items))
    task = load_task(load_stream(stream_file(tmp_path, [files_task("train.json"), OTHER]), {}), 0)
    assert "NaN is not a number, Infinity is far" in task.train_texts + task.test_texts


# -- 4. labels of mixed types ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "kind"), [(True, "true/false values"), (1.5, "numbers"), (1, "integers")])
def test_labels_of_mixed_types_are_refused(value, kind, tmp_path):
    items = rows()
    items[7]["label"] = value
    write_jsonl(tmp_path / "train.jsonl", items)
    err = refused(stream_file(tmp_path, [files_task("train.jsonl"), OTHER]))
    assert err.key == "tasks[0].label_field"
    assert f"strings (9 rows), {kind} (1 row)" in err.message and "row 7 (line 8) of the train split" in err.message
    assert "all strings or all integers" in err.hint


def test_labels_of_one_type_across_splits(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows())
    write_jsonl(tmp_path / "test.jsonl", rows(4, labels=(0, 1)))
    err = refused(stream_file(tmp_path, [files_task("train.jsonl", "test.jsonl"), OTHER]))
    assert "strings (10 rows), integers (4 rows)" in err.message and "of the test split" in err.message


def test_integer_labels_alone_are_fine(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows(labels=(0, 1)))
    task = load_task(load_stream(stream_file(tmp_path, [files_task("train.jsonl"), OTHER]), {}), 0)
    assert task.label_names == ["0", "1"]


# -- 5. domain-incremental tasks must share labels -------------------------------------------------------------------


def test_domain_incremental_tasks_without_a_shared_label_are_refused(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows())
    stream = load_stream(stream_file(tmp_path, [files_task("train.jsonl"), OTHER], scenario="domain_incremental"), {})
    with pytest.raises(ConfigError) as info:
        load_stream_tasks(stream)
    err = info.value
    assert err.key == "tasks[1]" and "must share their label set" in err.message and "rename_labels" in err.hint


def test_domain_incremental_tasks_renamed_onto_one_label_set_pass(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows())
    renamed = {**OTHER, "rename_labels": {"music": "pos", "weather": "neg"}}
    stream = load_stream(stream_file(tmp_path, [files_task("train.jsonl"), renamed], scenario="domain_incremental"), {})
    assert [sorted(load_task(stream, i).label_names) for i in range(2)] == [["neg", "pos"], ["neg", "pos"]]


def test_domain_incremental_tasks_may_overlap_partly(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows(labels=("pos", "neg", "music")))
    stream = load_stream(stream_file(tmp_path, [files_task("train.jsonl"), OTHER], scenario="domain_incremental"), {})
    assert load_task(stream, 0) and load_task(stream, 1).label_names == ["music", "weather"]


def test_validate_of_a_stream_refuses_disjoint_domain_tasks(tmp_path, capsys):
    write_jsonl(tmp_path / "train.jsonl", rows())
    path = stream_file(tmp_path, [files_task("train.jsonl"), OTHER], scenario="domain_incremental")
    assert main(["validate", str(path)]) == 2
    assert "must share their label set" in capsys.readouterr().err


# -- 6. and 7. label_names and classes values ------------------------------------------------------------------------


@pytest.mark.parametrize("value", [5, "sports"])
def test_label_names_that_is_neither_a_list_nor_a_file(value, tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows())
    err = refused(stream_file(tmp_path, [files_task("train.jsonl", label_names=value), OTHER]))
    assert err.key == "tasks[0].label_names"
    assert err.message == f"expected a list of names or a path to a JSON file; got {value}"


def test_a_missing_label_names_file_is_still_called_a_file(tmp_path):
    write_jsonl(tmp_path / "train.jsonl", rows())
    err = refused(stream_file(tmp_path, [files_task("train.jsonl", label_names="labels.json"), OTHER]))
    assert "label names file not found" in err.message


@pytest.mark.parametrize(("scenario", "classes", "message"), [
    ("task_incremental", [], "list at least one class"),
    ("class_incremental", [], "list at least 2 classes"),
])
def test_too_few_classes_are_refused_where_they_are_written(scenario, classes, message, tmp_path):
    path = stream_file(tmp_path, [files_task("train.jsonl", classes=classes), OTHER], scenario=scenario)
    with pytest.raises(ConfigError, match=message) as info:
        load_stream(path, {})
    assert info.value.key == "tasks[0].classes" and info.value.line == 8


# -- 8. CSV with an unclosed quote -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "line"), [
    ('text,label\n"unterminated quote,pos\nanother,neg\n' + "row,neg\n" * 10, 2),
    ('text,label\na,pos\n"multi\nline",neg\nb,"pos\nc,neg\n', 5),
])
def test_an_unclosed_csv_quote_names_the_line_it_opens(text, line, tmp_path):
    (tmp_path / "train.csv").write_text(text)
    err = refused(stream_file(tmp_path, [files_task("train.csv"), OTHER]))
    assert f"line {line} opens a quoted field that is never closed" in err.message, err.message


def test_a_quoted_field_over_several_lines_is_fine(tmp_path):
    (tmp_path / "train.csv").write_text('text,label\n"one\ntwo",pos\n' + "".join(f"t {i},{'pos' if i % 2 else 'neg'}\n" for i in range(9)))
    task = load_task(load_stream(stream_file(tmp_path, [files_task("train.csv"), OTHER]), {}), 0)
    assert "one\ntwo" in task.train_texts + task.test_texts


# -- 9. the data root ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("root", "problem"), [("absent", "does not exist"), ("afile", "is not a folder")])
def test_a_data_root_that_is_not_a_folder_is_named(root, problem, tmp_path, capsys):
    (tmp_path / "afile").write_text("x\n")
    path = stream_file(tmp_path, [files_task("${DATA_ROOT}/agnews/train.json", "${DATA_ROOT}/agnews/test.json"), OTHER])
    with pytest.raises(ConfigError) as info:
        make_variables(tmp_path / root)
    assert info.value.key == "--data-root" and info.value.message == f"{tmp_path / root} {problem}"
    assert main(["validate", str(path), "--data-root", str(tmp_path / root)]) == 2
    assert capsys.readouterr().err.startswith(f"error: --data-root: {tmp_path / root} {problem}")


def test_a_missing_folder_in_a_data_path_is_named(tmp_path):
    (tmp_path / "afile").write_text("x\n")
    err = refused(stream_file(tmp_path, [files_task(str(tmp_path / "gone" / "train.json")), OTHER]))
    assert f"(its folder {tmp_path / 'gone'} does not exist)" in err.message
    err = refused(stream_file(tmp_path, [files_task(str(tmp_path / "afile" / "train.json")), OTHER]))
    assert f"(its folder {tmp_path / 'afile'} is a file, not a folder)" in err.message


def test_validate_names_an_unknown_bundled_backbone(tmp_path, capsys):
    """(validate gives backbone errors the experiment's file:line through ``Source.locating``.)"""
    stream_file(tmp_path, [{**OTHER, "name": "first", "classes": ["sports", "cooking"]}, OTHER])
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text("name: e\nstream: stream.yaml\nbackbone: bundled:all-MiniLM-L12-v2\n")
    assert main(["validate", str(experiment)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert "backbone.name: unknown bundled backbone 'bundled:all-MiniLM-L12-v2'; available: bundled:all-MiniLM-L6-v2" in err
    assert "Repo id" not in err and "unreachable" not in err, err
