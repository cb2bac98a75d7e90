"""Config inputs that used to get through or be reported badly: each refused with one short message naming the file (or
the --set flag), the line, the key path and what is allowed.

Search spaces checked value by value against their field, prompt tuning against the backbone's positions, --set errors
at the flag, non-name keys, empty files, non-UTF-8 files, directories, Python type names, parameterless strategies,
unsupported ``${...}`` forms and quoted numbers.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml

from conftest import config_error, write_config

from cl_harness.config.loader import load_experiment, load_stream
from cl_harness.config.yaml_io import load_yaml
from cl_harness.errors import ConfigError

STREAM = """\
name: s
scenario: class_incremental
tasks:
  - name: a
    source: {type: demo}
    classes: [sports, cooking]
    valid_per_class: 2
  - name: b
    source: {type: demo, seed: 1}
    classes: [music, weather]
    valid_per_class: 2
"""


def write(tmp_path: Path, experiment: str, stream: str = STREAM) -> Path:
    return write_config(tmp_path, experiment, stream)


error_of = config_error


# -- 1. search spaces: every choice and both ends of a range checked against the parameter's field ---------------------

SEARCH_HEAD = """\
name: e
stream: stream.yaml
strategies:
  - naive
  - ewc: {ewc_lambda: 1000}
search:
  spaces:
    ewc:
"""


def search_error(tmp_path, lines: str) -> ConfigError:
    from cl_harness.search.config import parse_search
    from cl_harness.strategies import default_registry

    path = write(tmp_path, SEARCH_HEAD + textwrap.indent(textwrap.dedent(lines), "      "))
    data, source = load_yaml(path, "experiment")
    specs = default_registry().parse_strategies(data["strategies"], "class_incremental", source)
    with pytest.raises(ConfigError) as info:
        parse_search(data["search"], specs, source, True)
    return info.value


BAD_SPACES = [
    # (space lines, key path, fragment of the message, line)
    ("mode: {choice: [onlin]}", "search.spaces.ewc.mode.choice[0]", "must be one of separate, online", 9),
    ("mode: {choice: [separate, onlin]}", "search.spaces.ewc.mode.choice[1]", "must be one of separate, online", 9),
    ("decay: {low: 0.5, high: 3}", "search.spaces.ewc.decay.high", "must be <= 1.0, got 3.0", 9),
    ("ewc_lambda: {low: -5, high: 3}", "search.spaces.ewc.ewc_lambda.low", "must be >= 0.0", 9),
    ("training.batch_size: {low: 0, high: 8, type: int}", "search.spaces.ewc.training.batch_size.low", "must be >= 1", 9),
    ("training.lr: {choice: [0.001, 0]}", "search.spaces.ewc.training.lr.choice[1]", "must be > 0.0", 9),
    ("training.epochs: {choice: [1, 2.5]}", "search.spaces.ewc.training.epochs.choice[1]", "expected an integer", 9),
    ("training.epochs: {low: 0.5, high: 2.5}", "search.spaces.ewc.training.epochs.type", "is an integer", 9),
    ("training.epochs: {low: 0.5, high: 2.5, type: int}", "search.spaces.ewc.training.epochs.low", "whole-number bounds", 9),
    ("ewc_lambda: {low: 0.5, high: 2.5, type: int}", "search.spaces.ewc.ewc_lambda.low", "whole-number bounds", 9),
    ("mode: {low: 0, high: 1}", "search.spaces.ewc.mode", "give `choice: [...]` of 'separate' | 'online'", 9),
    ("decay: {choice: [0.5, 0.9]}", "search.spaces.ewc.decay.choice[0]", "applies only to mode: online", 9),
    ("ewc_lambda: {choice: [10, [20]]}", "search.spaces.ewc.ewc_lambda.choice[1]", "cannot choose between lists", 9),
]


@pytest.mark.parametrize(("space", "key", "fragment", "line"), BAD_SPACES, ids=[b[0] for b in BAD_SPACES])
def test_a_search_value_outside_its_fields_values_is_refused_at_its_key(tmp_path, space, key, fragment, line):
    err = search_error(tmp_path, space)
    assert err.key == key and fragment in err.message and err.line == line, str(err)
    assert str(err).startswith(f"{tmp_path / 'exp.yaml'}:{line}: {key}: ")


def test_a_choice_typo_names_the_nearest_allowed_value(tmp_path):
    assert search_error(tmp_path, "mode: {choice: [onlin]}").hint == "did you mean 'online'?"


def test_a_float_range_for_an_integer_suggests_a_valid_int_range(tmp_path):
    err = search_error(tmp_path, "training.epochs: {low: 0.5, high: 2.5}")
    assert err.hint == "add type: int, e.g. {low: 1, high: 2, type: int}"


def test_valid_search_values_pass_and_choices_are_converted(tmp_path):
    from cl_harness.search.config import parse_search
    from cl_harness.strategies import default_registry

    path = write(tmp_path, SEARCH_HEAD + textwrap.indent(textwrap.dedent("""\
        mode: {choice: [separate, online]}
        decay: {low: 0.5, high: 1}
        training.lr: {choice: [1e-4, "1e-3"]}
        training.epochs: {low: 1, high: 3, type: int}
    """), "      "))
    data, source = load_yaml(path, "experiment")
    specs = default_registry().parse_strategies(data["strategies"], "class_incremental", source)
    plan = parse_search(data["search"], specs, source, True)
    assert plan.spaces["ewc"]["training.lr"].choice == [1e-4, 1e-3]


def test_validate_refuses_a_search_choice_outside_the_field(tmp_path, tiny_bert, capsys):
    from conftest import write_demo_stream, write_experiment

    from cl_harness.cli import main

    stream = write_demo_stream(tmp_path, per_class=8)
    stream.write_text(stream.read_text().replace("test_examples_per_class: 10", "test_examples_per_class: 10\n  valid_per_class: 2"))
    path = write_experiment(tmp_path, tiny_bert, ["naive", {"ewc": {"ewc_lambda": 1000}}])
    data = yaml.safe_load(path.read_text())
    data["search"] = {"n_trials": 1, "spaces": {"ewc": {"mode": {"choice": ["onlin"]}}}}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:" in err and "search.spaces.ewc.mode.choice[0]: must be one of separate, online" in err, err
    assert "Traceback" not in err


# -- 2. prompt tuning: num_virtual_tokens + max_length within the backbone's positions -------------------------------

def test_prompt_tuning_longer_than_the_positions_is_refused(tmp_path, tiny_bert, capsys):
    from conftest import write_demo_stream, write_experiment

    from cl_harness.cli import main

    write_demo_stream(tmp_path, per_class=4)
    fields = {"peft": {"method": "prompt_tuning", "num_virtual_tokens": 250}}
    path = write_experiment(tmp_path, tiny_bert, ["naive"], backbone_fields=fields, max_length=48)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "backbone.peft.num_virtual_tokens: 250 virtual tokens + training.max_length 48 = 298 positions" in err, err
    assert "the backbone has 256" in err and "Traceback" not in err
    fields["peft"]["num_virtual_tokens"] = 208  # 208 + 48 = 256: fits
    path = write_experiment(tmp_path, tiny_bert, ["naive"], backbone_fields=fields, max_length=48)
    assert main(["validate", str(path)]) == 0


# -- 3. --set: messages name the flag; a malformed flag gets the allowed form ----------------------------------------

def test_a_bad_set_value_names_the_flag_not_the_files_line(tmp_path):
    path = write(tmp_path, "name: e\nstream: stream.yaml\ntraining:\n  epochs: 1\n")
    err = error_of(path, ["training.epochs=abc"])
    assert str(err) == f"{path}: --set training.epochs=abc: training.epochs: expected an integer, got 'abc'"
    err = error_of(path, ["training=5"])
    assert str(err).startswith(f"{path}: --set training=5: training: expected a mapping")
    err = error_of(path, ["backbone={name: x, pooling: max}"])  # a value inside a mapping the flag gave
    assert str(err).startswith(f"{path}: --set backbone={{name: x, pooling: max}}: backbone.pooling: must be cls or mean")
    err = error_of(path, ["training.epochs=1", "seeds=[1, 1]"])
    assert str(err).startswith(f"{path}: --set seeds=[1, 1]: seeds: lists a seed twice")
    err = error_of(path, ["name.sub=1"])  # a key below a string
    assert str(err).startswith(f"{path}: --set name.sub=1: name is 'e', a plain value: no key can be set below it")
    err = error_of(path, ["description.sub=1"])  # a mapping the flag put where nothing was, and a string is expected
    assert str(err).startswith(f"{path}: --set description.sub=1: description: expected a string")
    err = error_of(path, ["training.lr=0"])
    assert (err.file, err.origin, err.line, err.key) == (str(path), "--set training.lr=0", None, "training.lr")


def test_a_value_from_the_file_still_names_its_line_when_another_is_set(tmp_path):
    path = write(tmp_path, "name: e\nstream: stream.yaml\ntraining:\n  epochs: 0\n")
    err = error_of(path, ["training.lr=1e-3"])
    assert err.file == str(path) and err.line == 4 and err.key == "training.epochs" and err.origin is None


@pytest.mark.parametrize("flag", ["=5", " =5", "training..epochs=1", ".epochs=1", "training.=1", "training.epochs"])
def test_a_malformed_set_flag_says_the_allowed_form(tmp_path, flag):
    path = write(tmp_path, "name: e\nstream: stream.yaml\n")
    err = error_of(path, [flag])
    assert "--set KEY.PATH=VALUE" in err.message and err.origin == f"--set {flag}", str(err)
    assert "unknown key" not in str(err)


def test_an_unparsable_set_value_is_one_short_line(tmp_path):
    err = error_of(write(tmp_path, "name: e\nstream: stream.yaml\n"), ["seeds=[0,"])
    assert err.origin == "--set seeds=[0," and "cannot parse the value '[0,' as YAML" in err.message
    assert "\n" not in err.message and len(err.message) < 200


# -- 4. keys that are not names -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "shown"), [("1", "1"), ("true", "true"), ("2.5", "2.5"), ("null", "null")])
def test_a_key_that_is_not_a_name_is_refused_at_its_own_line(tmp_path, key, shown):
    path = write(tmp_path, f"name: e\nstream: stream.yaml\nstrategies: [naive]\nseeds: [0]\n\n{key}: x\n")
    err = error_of(path)
    assert err.line == 6 and err.key is None and f"the key {shown} is not a name; keys must be names" in err.message
    assert "[1]" not in str(err)


def test_a_nested_key_that_is_not_a_name_names_its_mapping(tmp_path):
    err = error_of(write(tmp_path, "name: e\nstream: stream.yaml\ntraining:\n  epochs: 1\n  3: 4\n"))
    assert err.line == 5 and err.key == "training" and "keys must be names" in err.message


# -- 5. empty files ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n# and another\n", "---\n", "~\n", "null\n"])
def test_an_empty_experiment_or_stream_file_says_it_is_empty(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    err = error_of(path)
    assert err.file == str(path) and err.message.startswith("the file is empty; an experiment needs at least `name`")
    with pytest.raises(ConfigError, match="the file is empty; a stream needs at least `name`, `scenario` and `tasks`"):
        load_stream(path)
    exp = write(tmp_path, "name: e\nstream: empty.yaml\n")
    assert "the file is empty; a stream needs" in error_of(exp).message


def test_validate_of_an_empty_file_says_it_is_empty(tmp_path, capsys):
    from cl_harness.cli import main

    path = tmp_path / "empty.yaml"
    path.write_text("# nothing yet\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}: the file is empty" in err and "missing required key" not in err


# -- 6. files that are not UTF-8 --------------------------------------------------------------------------------------

def test_a_latin1_byte_is_reported_with_its_line_and_offset(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_bytes(b"name: e\nstream: stream.yaml\ndescription: caf\xe9\n")
    err = error_of(path)
    assert err.line == 3 and "must be UTF-8" in err.message and "0xe9 at byte offset 44" in err.message, str(err)
    assert "UnicodeDecodeError" not in str(err)


def test_a_utf16_file_is_named_as_such(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_bytes("name: e\nstream: stream.yaml\n".encode("utf-16"))
    err = error_of(path)
    assert err.line == 1 and "must be UTF-8 text; found a UTF-16 file" in err.message
    stream = tmp_path / "s.yaml"
    stream.write_bytes(STREAM.encode("utf-16"))
    with pytest.raises(ConfigError, match="stream file must be UTF-8"):
        load_stream(stream)


def test_a_utf8_file_with_a_byte_order_mark_still_loads(tmp_path):
    path = write(tmp_path, "name: e\nstream: stream.yaml\n")
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    assert load_experiment(path).config.name == "e"


# -- 7. directories where a YAML file belongs ------------------------------------------------------------------------

def test_a_directory_is_not_reported_as_missing(tmp_path, capsys):
    from cl_harness.cli import main

    folder = tmp_path / "exp.yaml"
    folder.mkdir()
    err = error_of(folder)
    assert str(err) == f"{folder} is a directory; give a YAML experiment file"
    with pytest.raises(ConfigError, match="is a directory; give a YAML stream file"):
        load_stream(folder)
    assert main(["validate", str(folder)]) == 2
    assert "is a directory; give a YAML" in capsys.readouterr().err
    (tmp_path / "data").mkdir()
    err = error_of(write(tmp_path / "data", "name: e\nstream: .\n"))
    assert err.key == "stream" and err.line == 2 and "is a directory; give a YAML stream file" in err.message


@pytest.mark.parametrize("kind", ["device", "fifo"])
def test_a_device_or_pipe_is_not_reported_as_missing(tmp_path, capsys, kind):
    import os

    from cl_harness.cli import main

    if kind == "fifo":
        special = tmp_path / "pipe.yaml"
        os.mkfifo(special)
    else:
        special = Path(os.devnull)
    assert main(["validate", str(special)]) == 2  # refused before any read: a pipe with no writer would block
    assert f"{special} is not a regular file (a device, pipe or socket); give a YAML config file" in capsys.readouterr().err
    err = error_of(write(tmp_path, f"name: e\nstream: {special}\n"))
    assert err.key == "stream" and err.line == 2 and "is not a regular file" in err.message


# -- 8. no Python type names in messages -----------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "key", "expected"), [
    ("strategies: naive", "strategies", "expected a list (e.g. [naive, ewc]), got 'naive'"),
    ("seeds: 3", "seeds", "expected a list of integers (e.g. [0, 1, 2]), got 3"),
    ("orders: a", "orders", "expected a list of lists of strings (e.g. [[a, b], [b, a]]), got 'a'"),
    ("orders: [a]", "orders[0]", "expected a list of strings (e.g. [a]), got 'a'"),
    ("backbone: {peft: {target_modules: query}}", "backbone.peft.target_modules", "expected a list of strings (e.g. [query])"),
])
def test_type_messages_use_words_not_python_type_names(tmp_path, body, key, expected):
    err = error_of(write(tmp_path, f"name: e\nstream: stream.yaml\n{body}\n"))
    assert err.key == key and expected in err.message, str(err)
    assert "typing" not in err.message and "<class" not in err.message


def test_a_search_blocks_type_messages_use_words():
    from cl_harness.config.schema import parse
    from cl_harness.search.config import SearchConfig

    with pytest.raises(ConfigError) as info:
        parse(SearchConfig, {"spaces": {}, "seeds": 0})
    assert info.value.message == "expected a list of integers (e.g. [0]), got 0"


def test_no_config_field_type_reads_as_a_python_name():
    import dataclasses
    import typing

    from cl_harness.config.experiment import ExperimentConfig
    from cl_harness.config.instruction import InstructionConfig
    from cl_harness.config.schema import describe
    from cl_harness.config.stream import StreamConfig
    from cl_harness.search.config import ParamSpace, SearchConfig
    from cl_harness.strategies import default_registry

    classes = [ExperimentConfig, StreamConfig, InstructionConfig, SearchConfig, ParamSpace]
    classes += [info.config_cls for info in default_registry()]
    seen = set()
    while classes:
        cls = classes.pop()
        if cls in seen:
            continue
        seen.add(cls)
        for name, type_name, _, _ in describe(cls):
            assert "typing" not in type_name and "<" not in type_name and "[" not in type_name, (cls, name, type_name)
        classes += [tp for tp in typing.get_type_hints(cls).values() if dataclasses.is_dataclass(tp)]


# -- 9. strategies without parameters ---------------------------------------------------------------------------------

def test_a_parameter_for_a_strategy_that_takes_none_says_so(tmp_path, capsys):
    from cl_harness.cli import main

    path = write(tmp_path, "name: e\nstream: stream.yaml\nstrategies:\n  - naive: {lr: 0.1}\n")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:4: strategies[0].naive.lr: naive takes no parameters; remove 'lr'" in err, err
    assert "allowed: \n" not in err and "allowed: " not in err


# -- 10. ${...} forms other than ${NAME} -----------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["${NOPE:-../d/ok.jsonl}", "${DATA_ROOT", "${}/x.json", "${1X}/x.json", "${A B}"])
def test_an_unsupported_variable_form_is_named(tmp_path, value):
    stream = STREAM.replace("source: {type: demo, seed: 1}", f'source: {{type: files, train_file: "{value}"}}')
    path = write(tmp_path, "name: e\nstream: stream.yaml\n", stream)
    with pytest.raises(ConfigError) as info:
        load_experiment(path, data_root=tmp_path)
    err = info.value
    assert err.key == "tasks[1].source.train_file" and err.line == 9, str(err)
    assert err.message.startswith("unsupported variable syntax") and "only ${NAME} is expanded" in err.message


def test_variables_still_expand(tmp_path, monkeypatch):
    monkeypatch.setenv("CL_EPOCHS", "3")
    monkeypatch.setenv("CL_LR", "1e-3")
    path = write(tmp_path, "name: e-${CL_EPOCHS}\nstream: stream.yaml\ntraining: {epochs: '${CL_EPOCHS}', lr: '${CL_LR}'}\n")
    config = load_experiment(path).config
    assert (config.name, config.training.epochs, config.training.lr) == ("e-3", 3, 1e-3)


# -- 11. quoted numbers: accepted on purpose (${VAR} expands to a string, PyYAML reads 1e-3 as one) ---------------

def test_quoted_numbers_are_accepted_and_booleans_and_words_are_not(tmp_path):
    path = write(tmp_path, 'name: e\nstream: stream.yaml\nseeds: ["0", "2"]\ntraining: {epochs: "2", lr: "1e-4"}\n')
    config = load_experiment(path).config
    assert config.seeds == [0, 2] and config.training.epochs == 2 and config.training.lr == 1e-4
    for body, fragment in [("training: {epochs: true}", "expected an integer, got true"),
                           ('training: {epochs: "2.5"}', "expected an integer, got '2.5'"),
                           ('training: {lr: "fast"}', "expected a number, got 'fast'"),
                           ('seeds: ["0", "0"]', "lists a seed twice")]:
        err = error_of(write(tmp_path, f"name: e\nstream: stream.yaml\n{body}\n"))
        assert fragment in err.message, (body, str(err))


@pytest.mark.parametrize(("body", "key", "expected"), [
    ("strategies: []", "strategies", "list at least one strategy"),
    ("seeds: []", "seeds", "list at least one seed"),
    ("orders: []", "orders", "list at least one order"),  # validated as "0 runs" and ran an empty comparison
])
def test_an_empty_list_of_what_the_grid_is_made_of_is_refused(tmp_path, body, key, expected):
    err = error_of(write(tmp_path, f"name: e\nstream: stream.yaml\n{body}\n"))
    assert err.key == key and expected in err.message and err.line == 3, str(err)


@pytest.mark.parametrize("body, key", [
    ("backbone: {name: 'bundled:smollm2-135m-instruct', kind: causal_lm, gguf_file: nope.gguf}", "backbone.gguf_file"),
    ("backbone: {name: 'bundled:smollm2-135m-instruct', kind: causal_lm, revision: main}", "backbone.revision"),
    ("backbone: {name: 'bundled:all-MiniLM-L6-v2', revision: v1}", "backbone.revision"),
])
def test_a_weights_choice_for_a_bundled_backbone_is_refused_not_ignored(tmp_path, body, key):
    err = error_of(write(tmp_path, f"name: e\nstream: stream.yaml\n{body}\n"))
    assert err.key == key and "comes with its own weights; leave" in err.message, str(err)


@pytest.mark.parametrize("body, bundled, kind", [
    ("backbone: {kind: causal_lm}", "bundled:all-MiniLM-L6-v2", "encoder"),  # the default backbone
    ("backbone: {name: 'bundled:all-MiniLM-L6-v2', kind: seq2seq}", "bundled:all-MiniLM-L6-v2", "encoder"),
    ("backbone: 'bundled:smollm2-135m-instruct'", "bundled:smollm2-135m-instruct", "causal_lm"),
])
def test_a_kind_that_does_not_match_a_bundled_backbone_is_refused_at_the_kind(tmp_path, body, bundled, kind):
    # The MiniLM as causal_lm failed loading it as a hub id ("Repo id must use alphanumeric chars").
    err = error_of(write(tmp_path, f"name: e\nstream: stream.yaml\n{body}\n"))
    assert err.key == "backbone.kind" and f"{bundled} holds {kind} weights; backbone.kind must be {kind}" in err.message, str(err)


@pytest.mark.parametrize("body, key", [("name: 2024-01-31", "name"), ("description: 2024-01-31 12:00:00", "description")])
def test_a_date_yaml_reads_where_text_goes_must_be_quoted(tmp_path, body, key):
    # "expected a string, got datetime.date(2024, 1, 31)"
    err = error_of(write(tmp_path, f"stream: stream.yaml\n{body}\n" if key == "name" else f"name: e\nstream: stream.yaml\n{body}\n"))
    written = body.split(": ", 1)[1]
    assert err.key == key and err.message == f"YAML reads {written} as a date, not as the text {written!r}", str(err)
    assert err.hint == f'quote it to keep it as written: "{written}"'
