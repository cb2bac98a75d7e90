"""Experiment and stream configs: typed, unknown keys refused with a suggestion, errors located."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import config_error, write_config

from cl_harness.config.loader import load_experiment, load_stream
from cl_harness.errors import ConfigError

STREAM = """\
name: s
scenario: class_incremental
tasks:
  - name: a
    source: {type: demo}
    classes: [sports, cooking]
  - name: b
    source: {type: demo, seed: 1}
    classes: [music, weather]
"""


def write(tmp_path: Path, experiment: str, stream: str = STREAM) -> Path:
    return write_config(tmp_path, experiment, stream)


error_of = config_error


def test_defaults_and_coercion(tmp_path):
    path = write(tmp_path, "name: e\nstream: stream.yaml\ntraining: {lr: 1e-3, epochs: 2.0}\n")
    config = load_experiment(path).config
    assert config.training.lr == pytest.approx(1e-3)  # PyYAML reads 1e-3 as a string
    assert config.training.epochs == 2 and isinstance(config.training.epochs, int)
    assert config.strategies == ["naive"] and config.seeds == [0]
    assert config.backbone.name == "bundled:all-MiniLM-L6-v2"


def test_unknown_key_names_file_line_path_and_nearest_key(tmp_path):
    path = write(tmp_path, "name: e\nstream: stream.yaml\ntraining:\n  epochs: 1\n  learning_rate: 0.1\n")
    err = error_of(path)
    assert err.file == str(path) and err.line == 5 and err.key == "training.learning_rate"
    assert "unknown key" in err.message and "lr" in err.message
    assert str(err).startswith(f"{path}:5: training.learning_rate: unknown key")


def test_nearest_key_suggestion(tmp_path):
    path = write(tmp_path, "name: e\nstream: stream.yaml\ntraining: {epocs: 1}\n")
    assert error_of(path).hint == "did you mean 'epochs'?"


@pytest.mark.parametrize(
    "body, key, fragment",
    [
        ("training: {epochs: two}", "training.epochs", "expected an integer"),
        ("training: {lr: -0.1}", "training.lr", "must be > 0.0"),
        ("training: {batch_size: 0}", "training.batch_size", "must be >= 1"),
        ("training: {device: tpu}", "training.device", "auto, cpu, cuda"),
        ("seeds: [1, 1]", "seeds", "twice"),
        ("strategies: []", "strategies", "at least one"),
        ("backbone: {pooling: max}", "backbone.pooling", "cls or mean"),
    ],
)
def test_wrong_values_are_refused_with_the_key_path(tmp_path, body, key, fragment):
    err = error_of(write(tmp_path, f"name: e\nstream: stream.yaml\n{body}\n"))
    assert err.key == key and fragment in err.message


def test_yaml_syntax_error_has_line_and_column(tmp_path):
    err = error_of(write(tmp_path, "name: e\nstream: stream.yaml\ntraining: {epochs: 1\n"))
    assert "YAML syntax error" in err.message and "column" in err.message and err.line is not None


def test_missing_files(tmp_path):
    err = error_of(tmp_path / "nope.yaml")
    assert "not found" in err.message
    err = error_of(write(tmp_path, "name: e\nstream: other.yaml\n"))
    assert err.key == "stream" and "not found" in err.message


def test_overrides_apply_before_validation(tmp_path):
    path = write(tmp_path, "name: e\nstream: stream.yaml\n")
    config = load_experiment(path, ["training.epochs=3", "training.lr=2e-5", "seeds=[1, 2]"]).config
    assert (config.training.epochs, config.training.lr, config.seeds) == (3, 2e-5, [1, 2])
    err = error_of(path, ["training.epoch=3"])
    assert err.key == "training.epoch" and err.hint == "did you mean 'epochs'?"
    with pytest.raises(ConfigError, match="KEY.PATH=VALUE"):
        load_experiment(path, ["training.epochs"])


def test_variables_and_data_root(tmp_path, monkeypatch):
    stream = STREAM.replace("source: {type: demo, seed: 1}", "source: {type: files, train_file: \"${DATA_ROOT}/x.json\"}")
    path = write(tmp_path, "name: e\nstream: stream.yaml\n", stream)
    err = error_of(path)
    assert "${DATA_ROOT} is not set" in err.message and err.hint == "pass --data-root DIR" and err.line == 8
    loaded = load_experiment(path, data_root=tmp_path)
    assert loaded.stream.config.tasks[1].source.train_file == f"{tmp_path.resolve()}/x.json"


@pytest.mark.parametrize(
    "change, fragment",
    [
        (("- name: b", "- name: a"), "duplicate task name 'a'"),
        (("scenario: class_incremental", "scenario: class-incremental"), "must be one of"),
        (("source: {type: demo, seed: 1}", "source: {type: files, name: x}"), "does not apply to a source of type 'files'"),
        (("source: {type: demo, seed: 1}", "source: {type: hub}"), "needs `name`"),
    ],
)
def test_stream_errors(tmp_path, change, fragment):
    (tmp_path / "s.yaml").write_text(STREAM.replace(*change))
    with pytest.raises(ConfigError, match=fragment):
        load_stream(tmp_path / "s.yaml")


def test_a_stream_needs_two_tasks(tmp_path):
    (tmp_path / "s.yaml").write_text(STREAM.split("  - name: b")[0])
    with pytest.raises(ConfigError, match="at least 2 tasks"):
        load_stream(tmp_path / "s.yaml")


def test_resolved_config_holds_the_stream_and_every_default(tmp_path):
    loaded = load_experiment(write(tmp_path, "name: e\nstream: stream.yaml\n"))
    resolved = loaded.resolved()
    assert resolved["training"]["batch_size"] == 16 and resolved["stream"]["scenario"] == "class_incremental"
    assert resolved["stream"]["tasks"][0]["source"]["type"] == "demo"
