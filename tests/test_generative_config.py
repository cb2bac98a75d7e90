"""Bad input for generative experiments: each refused before training with file, line and key (exit 2), or fixed and logged."""

from __future__ import annotations

import logging

import pytest
import torch
import yaml
from generative_helpers import build_tiny_llama, write_generative_experiment

from cl_harness.cli import main
from cl_harness.errors import ConfigError


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from conftest import demo_words

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), demo_words())


def check(path):
    from cl_harness.config.loader import load_experiment
    from cl_harness.grid.prepare import check_experiment

    return check_experiment(load_experiment(path))


def refused(path) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        check(path)
    return info.value


def test_a_template_without_text_is_refused_at_its_key(tmp_path, tiny_llama, capsys):
    path = write_generative_experiment(tmp_path, tiny_llama, "causal_lm", ["naive"], instruction={"template": "Topic? {labels}"})
    error = refused(path)
    assert error.key == "tasks[0].instruction.template" and error.file.endswith("stream.yaml") and error.line
    assert "{text}" in error.message
    assert main(["validate", str(path)]) == 2 and "Traceback" not in capsys.readouterr().err


@pytest.mark.parametrize(
    "texts, key, words",
    [
        (["sports", " "], "tasks[0].instruction.label_texts[1]", "must not be empty"),
        (["food", "food"], "tasks[0].instruction.label_texts[1]", "also given"),
        ({"sports": "zzzq", "cooking": "qqqz"}, "tasks[0].instruction.label_texts", "tokenise to the same ids"),
        (["a"], "tasks[0].instruction.label_texts", "gives 1 texts for 2 labels"),
    ],
)
def test_bad_label_texts_are_refused(texts, key, words, tmp_path, tiny_llama):
    path = write_generative_experiment(tmp_path, tiny_llama, "causal_lm", ["naive"], instruction={"label_texts": texts})
    error = refused(path)
    assert error.key == key and words in error.message and error.line


def test_label_texts_replace_the_label_names_as_answers(tmp_path, tiny_llama):
    from cl_harness.grid.prepare import prepare_experiment

    path = write_generative_experiment(tmp_path, tiny_llama, "causal_lm", ["naive"], tasks=2)
    stream = yaml.safe_load((tmp_path / "stream.yaml").read_text())
    stream["tasks"][0]["instruction"] = {"label_texts": {"cooking": "food"}, "template": "{text} about"}
    (tmp_path / "stream.yaml").write_text(yaml.safe_dump(stream))
    prepared = prepare_experiment(check(path))
    first, second = prepared.encoded
    assert first.label_texts == ["sports", "food"] and second.label_texts == ["astronomy", "finance"]
    tokenizer = prepared.checked.tokenizer
    row = first.test_inputs[0]
    assert tokenizer.decode(row[0][row[1].bool()]).endswith("too. about")  # the task's own template, no default text
    assert "answer :" in tokenizer.decode(second.test_inputs[0][0][second.test_inputs[0][1].bool()])  # the default

    # a label text naming a label the task does not have is refused at its key
    stream["tasks"][1]["instruction"] = {"label_texts": {"cooking": "food"}}
    (tmp_path / "stream.yaml").write_text(yaml.safe_dump(stream))
    error = refused(path)
    assert error.key == "tasks[1].instruction.label_texts.cooking" and "no such label" in error.message


def test_a_missing_or_non_gguf_file_is_refused(tmp_path, tiny_llama):
    path = write_generative_experiment(tmp_path, tiny_llama, "causal_lm", ["naive"])
    data = yaml.safe_load(path.read_text())
    data["backbone"]["gguf_file"] = "absent.gguf"
    path.write_text(yaml.safe_dump(data))
    error = refused(path)
    assert error.key == "backbone.gguf_file" and "does not exist" in error.message
    gguf_line = next(n for n, line in enumerate(path.read_text().splitlines(), 1) if "gguf_file" in line)
    assert (error.file, error.line) == (str(path), gguf_line), "backbone errors carry the experiment's file and line"
    fake = tmp_path / "weights"
    fake.mkdir()
    (fake / "model.gguf").write_bytes(b"PK\x03\x04 not a gguf file")
    data["backbone"].update(name=str(fake), gguf_file="model.gguf")
    path.write_text(yaml.safe_dump(data))
    error = refused(path)
    assert error.key == "backbone.gguf_file" and "is not a GGUF file" in error.message


def test_a_backbone_kind_that_does_not_match_the_weights_is_refused(tmp_path, tiny_llama, tiny_bert):
    error = refused(write_generative_experiment(tmp_path, tiny_bert, "causal_lm", ["naive"]))
    assert error.key == "backbone.kind" and "'bert'" in error.message and "encoder" in error.message
    error = refused(write_generative_experiment(tmp_path, tiny_llama, "seq2seq", ["naive"]))
    assert error.key == "backbone.kind" and "'llama'" in error.message


def test_prompts_longer_than_the_context_are_refused(tmp_path):
    from conftest import demo_words

    short = build_tiny_llama(tmp_path / "short", demo_words(), context=24)
    error = refused(write_generative_experiment(tmp_path, short, "causal_lm", ["naive"]))
    assert error.key == "tasks[0].instruction.template" and "context is 24" in error.message and error.line


def test_a_causal_lm_without_pad_token_gets_eos_as_pad_and_says_so(tmp_path, caplog):
    from conftest import demo_words
    from generative_helpers import run_generative

    no_pad = build_tiny_llama(tmp_path / "nopad", demo_words(), pad=False)
    path = write_generative_experiment(tmp_path, no_pad, "causal_lm", ["zero_shot"], tasks=2)
    with caplog.at_level(logging.WARNING):
        checked = check(path)
    assert checked.tokenizer.pad_token == checked.tokenizer.eos_token == "</s>"
    assert any("no pad token" in r.getMessage() for r in caplog.records)
    torch.set_num_threads(1)
    result, _ = run_generative(path)
    assert result.status == "FINISHED"


def test_strategies_that_cannot_apply_are_refused_with_a_reason(tmp_path, tiny_llama, tiny_bert):
    error = refused(write_generative_experiment(tmp_path, tiny_llama, "causal_lm", ["naive", "si"]))
    assert error.key == "strategies[1]" and "does not run on backbone.kind causal_lm (it runs on: encoder)" in error.message
    error = refused(write_generative_experiment(tmp_path, tiny_bert, "encoder", ["in_context"]))
    assert error.key == "strategies[0]" and "(it runs on: causal_lm, seq2seq)" in error.message
    error = refused(write_generative_experiment(tmp_path, tiny_bert, "encoder", ["naive"], instruction={"template": "{text}"}))
    assert error.key == "tasks[0].instruction" and "generative backbones only" in error.message


def test_strategies_lists_the_backbone_kinds_of_each(capsys):
    assert main(["strategies"]) == 0
    lines = capsys.readouterr().out.splitlines()

    def kinds(name: str) -> str:
        (index,) = [i for i, line in enumerate(lines) if line.startswith(f"{name}: ")]
        return lines[index + 1].strip()

    assert kinds("lwf") == kinds("o_lora") == "backbone kinds: encoder, causal_lm, seq2seq"
    assert kinds("si") == "backbone kinds: encoder"
    assert kinds("in_context") == "backbone kinds: causal_lm, seq2seq"


@pytest.mark.parametrize("template, written", [("Topic of {text.upper}?", "{text.upper}"), ("{text[0]} {text}", "{text[0]}"),
                                               ("{text!r}", "{text!r}"), ("{text:>5}", "{text:>5}"), ("{txt}", "{txt}")])
def test_a_template_field_other_than_text_and_labels_as_written_is_named(template, written):
    # '{text.upper}' was told "must contain {text}", although it does.
    from cl_harness.config.instruction import check_template
    from cl_harness.config.yaml_io import Source
    from cl_harness.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        check_template(template, Source("s.yaml", {}), ("template",))
    assert info.value.message.startswith(f"unknown template field {written}; allowed: exactly {{text}} and {{labels}}"), info.value
