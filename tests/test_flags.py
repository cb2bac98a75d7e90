"""Command-line flags: every numeric flag is range-checked where it is parsed (one message, exit 2, no traceback), and a
flag that cannot apply to the command is refused rather than ignored."""

from __future__ import annotations

import pytest
from conftest import write_demo_stream, write_experiment

from cl_harness.cli import build_parser, main

OUT_OF_RANGE = [
    (["ui", "--port", "-1"], "--port", "must be from 0 to 65535, got -1"),
    (["ui", "--port", "99999999999999999999"], "--port", "must be from 0 to 65535"),
    (["ui", "--workers", "0"], "--workers", "must be from 1 to"),
    (["ui", "--timeout", "nan"], "--timeout", "must be more than 0"),
    (["ui", "--timeout", "-5"], "--timeout", "must be more than 0"),
    (["run", "x.yaml", "--workers", "100000"], "--workers", "must be from 1 to 1024"),
    (["run", "x.yaml", "--cpus-per-run", "0"], "--cpus-per-run", "must be more than 0"),
    (["run", "x.yaml", "--gpus-per-run", "inf"], "--gpus-per-run", "must be from 0 to 64"),
    (["run", "x.yaml", "--max-retries", "-2"], "--max-retries", "must be from 0 to 100"),
    (["run", "x.yaml", "--workers", "two"], "--workers", "'two' is not an integer"),
]


@pytest.mark.parametrize(("argv", "flag", "message"), OUT_OF_RANGE, ids=[" ".join(a[0::2]) + " " + a[-1] for a, _, _ in OUT_OF_RANGE])
def test_a_numeric_flag_out_of_its_range_is_one_message(argv, flag, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2 and f"error: argument {flag}: {message}" in err and "Traceback" not in err, err


def test_every_numeric_flag_has_a_range():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # the parser's own table of subcommands
    for name, command in commands.items():
        for action in command._actions:
            if action.type in (int, float):
                pytest.fail(f"{name} {action.option_strings}: a bare {action.type.__name__} has no range")


@pytest.fixture
def experiment(tmp_path, tiny_bert, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_demo_stream(tmp_path, per_class=4)
    return write_experiment(tmp_path, tiny_bert, ["naive"])


@pytest.mark.parametrize("flag", ["--skip-search", "--search-only"])
def test_a_search_flag_without_a_search_block_is_refused_before_anything_runs(flag, experiment, tmp_path, capsys):
    assert main(["run", str(experiment), flag, "--no-progress", "--tracking-uri", f"sqlite:///{tmp_path}/store/m.db"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {flag}: applies to an experiment with a `search:` block; {experiment} has none"), err
    assert not (tmp_path / "store").exists() and not (tmp_path / "runs").exists()


def test_set_on_a_stream_file_is_refused_not_ignored(tmp_path, capsys):
    stream = write_demo_stream(tmp_path, per_class=4)
    assert main(["validate", str(stream), "--set", "tasks.0.name=x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --set: applies to experiment files; {stream} is a stream"), err
