"""A tracking URI is parsed once, checked: what ``urlparse`` refuses (a malformed IPv6 host, a port that is not a
number), control characters and an empty ``--tracking-uri`` are one line naming the flag or key, exit 2, no traceback.

The store's own failures (exit 3) are in test_store_inputs.py.
"""

from __future__ import annotations

import pytest
import yaml

from cl_harness.cli import main
from cl_harness.errors import ConfigError
from cl_harness.tracking.store import choose_tracking_uri
from cl_harness.tracking.store_guard import (
    UriSource,
    check_database_driver,
    check_store_uri,
    check_tracking_reachable,
    parse_uri,
    public_uri,
)
from conftest import write_demo_stream, write_experiment

MALFORMED = ["http://[::1", "http://[::1/api", "https://[not-an-address]:5000", "http://localhost:port"]
CONTROL = ["sqlite:///mlruns/ml\x01flow.db", "sqlite:///mlruns/\nmlflow.db", "http://local\nhost:5000", "\x01sqlite:///x.db",
           "sqlite:///x.db\t", "http://host:5000/\x7f", "sqlite:///a\u2028b.db"]


@pytest.fixture
def work(tmp_path, monkeypatch):
    """An empty working folder (cwd) without $MLFLOW_TRACKING_URI."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path


def one_line(err: str, key: str) -> str:
    """The refusal: one message naming ``key`` (and a hint line), no traceback, no raw control character."""
    assert err.startswith(f"error: {key}: ") and "Traceback" not in err, err
    assert err.count("\n") <= 2, err
    assert not any(ord(c) < 32 and c != "\n" or 0x7f <= ord(c) <= 0x9f or c in "\u2028\u2029" for c in err), repr(err)
    return err


@pytest.mark.parametrize("uri", MALFORMED + CONTROL)
def test_every_check_of_a_uri_refuses_what_cannot_be_parsed_as_a_config_error(uri):
    source = UriSource("--tracking-uri")
    for check in (lambda: parse_uri(uri, "--tracking-uri"), lambda: check_store_uri(uri, "--tracking-uri"),
                  lambda: check_tracking_reachable(uri, source=source), lambda: check_database_driver(uri, source),
                  lambda: choose_tracking_uri(uri)):
        with pytest.raises(ConfigError) as raised:
            check()
        assert raised.value.key == "--tracking-uri", raised.value


def test_a_uri_from_the_yaml_names_the_key_file_and_line():
    with pytest.raises(ConfigError) as raised:
        check_store_uri("http://[::1", "tracking.uri", "exp.yaml", 7)
    message = str(raised.value)
    assert message.startswith("exp.yaml:7: tracking.uri: ") and "IPv6" in message and "http://[::1" in message, message


def test_a_control_character_is_named_escaped_not_printed():
    with pytest.raises(ConfigError) as raised:
        parse_uri("sqlite:///a\nb.db", "--tracking-uri")
    message = str(raised.value)
    assert "control character" in message and "'\\n'" in message and message.count("\n") == 1, message


def test_good_uris_parse_as_before():
    assert parse_uri("http://[::1]:5000", "--tracking-uri").port == 5000
    assert parse_uri("postgresql://u:p@db:5432/mlflow", "--tracking-uri").hostname == "db"
    assert parse_uri("databricks://profile:prefix", "--tracking-uri").scheme == "databricks"  # a secret scope, not a port
    assert public_uri("http://user:secret@[::1]:5000/") == "http://[::1]:5000/"


@pytest.mark.parametrize("command", [["compare", "tiny"], ["search-report", "tiny"], ["ui", "--port", "1"]])
@pytest.mark.parametrize("uri", ["http://[::1", "sqlite:///a\x01b.db", "sqlite:///a\nb.db"])
def test_read_only_commands_refuse_a_uri_that_cannot_be_parsed(command, uri, work, capsys):
    assert main([*command, "--tracking-uri", uri]) == 2
    one_line(capsys.readouterr().err, "--tracking-uri")


@pytest.mark.parametrize("command", [["compare", "tiny"], ["search-report", "tiny"], ["ui", "--port", "1"]])
def test_an_empty_tracking_uri_flag_is_refused_not_taken_for_the_default(command, work, capsys):
    assert main([*command, "--tracking-uri", ""]) == 2
    err = one_line(capsys.readouterr().err, "--tracking-uri")
    assert "empty" in err and "leave" in err, err
    assert not (work / "mlruns").exists()


@pytest.fixture
def experiment(work, tiny_bert):
    write_demo_stream(work, per_class=4)
    return write_experiment(work, tiny_bert, ["naive"])


@pytest.mark.parametrize("uri", ["http://[::1", "sqlite:///a\x01b.db", ""])
def test_run_and_its_dry_run_refuse_a_bad_flag_uri(uri, experiment, work, capsys):
    for dry in (["--dry-run"], []):
        assert main(["run", str(experiment), "--tracking-uri", uri, "--no-progress", *dry]) == 2
        one_line(capsys.readouterr().err, "--tracking-uri")
    assert not (work / "runs").exists() and not (work / "mlruns").exists()


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_bad_uri_in_the_yaml_names_tracking_uri_with_its_line(command, experiment, work, capsys):
    config = yaml.safe_load(experiment.read_text())
    config["tracking"] = {"uri": "http://[::1"}
    experiment.write_text(yaml.safe_dump(config, sort_keys=False))
    line = next(i for i, text in enumerate(experiment.read_text().splitlines(), 1) if "uri:" in text)
    assert main([command, str(experiment), *(["--dry-run"] if command == "run" else [])]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {experiment}:{line}: tracking.uri: ") and "Traceback" not in err, err


def test_a_bad_uri_in_the_variable_names_the_variable(work, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://[::1")
    assert main(["compare", "tiny"]) == 2
    one_line(capsys.readouterr().err, "$MLFLOW_TRACKING_URI")
