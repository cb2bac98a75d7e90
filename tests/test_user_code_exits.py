"""A user's plugin module that ends the process (``sys.exit``, ``SystemExit``) on import, while built or in a hook ends
the command with exit 2 and one message naming the module, never with exit 0 and nothing trained; no run stays RUNNING."""

from __future__ import annotations

import sqlite3
import textwrap

import pytest
from conftest import write_demo_stream, write_experiment

from cl_harness.cli import main

MODULES = {
    "exits_on_import": """
        import sys

        def _leave():
            sys.exit(4)

        _leave()
        """,
    "exits_when_built": """
        from avalanche.core import SupervisedPlugin

        class Plugin(SupervisedPlugin):
            def __init__(self):
                super().__init__()
                raise SystemExit("no GPU here, bye")
        """,
    "exits_in_a_hook": """
        import sys
        from avalanche.core import SupervisedPlugin

        class Plugin(SupervisedPlugin):
            def after_training_exp(self, strategy, **kwargs):
                sys.exit()
        """,
}


@pytest.fixture
def workplace(tmp_path, tiny_bert, monkeypatch):
    for name, text in MODULES.items():
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    write_demo_stream(tmp_path, per_class=4)
    return tmp_path


def experiment_with(workplace, tiny_bert, module: str):
    plugins = ["naive", {f"{module}:Plugin": {}}]
    return write_experiment(workplace, tiny_bert, [{"name": "mine", "plugins": plugins}])


@pytest.mark.parametrize(("module", "what"), [("exits_on_import", "ended the process on import: sys.exit(4)"),
                                              ("exits_when_built", "ended the process while it was built: sys.exit('no GPU")])
def test_a_plugin_that_exits_before_training_is_refused_at_validation(module, what, workplace, tiny_bert, capsys):
    experiment = experiment_with(workplace, tiny_bert, module)
    assert main(["validate", str(experiment)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {experiment}:") and "strategies[0].plugins[1]" in err and what in err, err
    assert f"in module '{module}' ({workplace / module}.py:" in err and "Traceback" not in err, err


def test_a_plugin_hook_that_exits_ends_the_run_failed_with_exit_2_naming_its_module(workplace, tiny_bert, capsys):
    experiment = experiment_with(workplace, tiny_bert, "exits_in_a_hook")
    db = workplace / "mlflow.db"
    assert main(["run", str(experiment), "--no-progress", "--tracking-uri", f"sqlite:///{db}"]) == 2
    err = capsys.readouterr().err
    assert "error: the command was ended by sys.exit(None) in module 'exits_in_a_hook'" in err and "Traceback" not in err, err
    assert "must not end the process" in err
    with sqlite3.connect(db) as connection:
        statuses = [status for (status,) in connection.execute("select status from runs")]
    connection.close()
    assert statuses and "RUNNING" not in statuses and "FAILED" in statuses


@pytest.mark.slow
def test_in_a_worker_process_the_exit_fails_that_run_naming_the_module(workplace, tiny_bert, capsys):
    experiment = experiment_with(workplace, tiny_bert, "exits_in_a_hook")
    db = workplace / "mlflow.db"
    assert main(["run", str(experiment), "--no-progress", "--workers", "2", "--tracking-uri", f"sqlite:///{db}"]) == 1
    out = capsys.readouterr().out
    assert "mine/seed0/order0: FAILED" in out and "ended by sys.exit(None) in module 'exits_in_a_hook'" in out, out
    with sqlite3.connect(db) as connection:
        assert "RUNNING" not in {status for (status,) in connection.execute("select status from runs")}
    connection.close()
