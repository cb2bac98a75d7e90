"""Bad data and backbone inputs are refused with one message naming the file, the line or row, the key and what is
allowed: backbones without a usable tokenizer, unknown bundled names and files given as backbones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from cl_harness.cli import main
from cl_harness.config.experiment import BackboneConfig
from cl_harness.config.loader import load_stream
from cl_harness.config.yaml_io import Source
from cl_harness.data.tasks import load_task
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


def rows(n: int = 10, labels=("pos", "neg")) -> list[dict]:
    return [{"text": f"sample text number {i}", "label": labels[i % len(labels)]} for i in range(n)]


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
    with pytest.raises(ConfigError, match="unknown token"):
        check_tokenizer_matches(tokenizer, config, "tiny", texts=strange)
    check_tokenizer_matches(tokenizer, config, "tiny")  # without texts, as before


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
        load_tokenizer(BackboneConfig(name=name), source=source)
    assert str(info.value).startswith(f"{tmp_path / 'experiment.yaml'}:4: backbone.name: "), str(info.value)


def test_validate_names_an_unknown_bundled_backbone(tmp_path, capsys):
    """(The experiment's file:line comes once grid/prepare.py passes ``source=loaded.source`` to the backbone loaders.)"""
    stream_file(tmp_path, [{**OTHER, "name": "first", "classes": ["sports", "cooking"]}, OTHER])
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text("name: e\nstream: stream.yaml\nbackbone: bundled:all-MiniLM-L12-v2\n")
    assert main(["validate", str(experiment)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert "backbone.name: unknown bundled backbone 'bundled:all-MiniLM-L12-v2'; available: bundled:all-MiniLM-L6-v2" in err
    assert "Repo id" not in err and "unreachable" not in err, err
