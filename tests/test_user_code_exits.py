"""A user's plugin module that ends the process (``sys.exit``, ``SystemExit``) on import, while built or in a hook ends
the command with exit 2 and one message naming the module, never with exit 0 and nothing trained; no run stays RUNNING.
In a worker process or a Ray task it fails that run only, with the same message, and is not retried."""

from __future__ import annotations

import sqlite3
import textwrap

import pytest
from conftest import local_ray_cluster, write_demo_stream, write_experiment

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
            def __init__(self, count_file=None):
                super().__init__()
                self.count_file = count_file

            def after_training_exp(self, strategy, **kwargs):
                if self.count_file is not None:
                    with open(self.count_file, "a") as out:
                        out.write("attempt\\n")
                sys.exit()
        """,
    "raises_in_a_hook": """
        import os
        from avalanche.core import SupervisedPlugin

        class Plugin(SupervisedPlugin):
            def __init__(self, fail_while=None):
                super().__init__()
                self.fail_while = fail_while

            def after_training_exp(self, strategy, **kwargs):
                if os.path.exists(self.fail_while):
                    raise ValueError("anchor shape mismatch")
        """,
}


def write_modules(folder) -> None:
    for name, text in MODULES.items():
        (folder / f"{name}.py").write_text(textwrap.dedent(text))


@pytest.fixture
def workplace(tmp_path, tiny_bert, monkeypatch):
    write_modules(tmp_path)
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


@pytest.fixture(scope="module")
def ray_cluster(tmp_path_factory):
    """A local Ray cluster with 2 CPUs whose workers import this checkout and the modules above."""
    modules = tmp_path_factory.mktemp("ray-modules")
    write_modules(modules)
    yield from local_ray_cluster(modules)


@pytest.mark.slow
def test_in_a_ray_task_the_exit_fails_that_run_naming_the_module_without_a_retry(ray_cluster, workplace, tiny_bert, capsys):
    attempts = workplace / "attempts"
    mine = {"name": "mine", "plugins": ["naive", {"exits_in_a_hook:Plugin": {"count_file": str(attempts)}}]}
    experiment = write_experiment(workplace, tiny_bert, [mine, "naive"])
    db = workplace / "mlflow.db"
    command = ["run", str(experiment), "--no-progress", "--executor", "ray", "--max-retries", "1", "--tracking-uri", f"sqlite:///{db}"]
    assert main(command) == 1
    out = capsys.readouterr().out
    assert "mine/seed0/order0: FAILED" in out and "ended by sys.exit(None) in module 'exits_in_a_hook'" in out, out
    assert "1 of 2 runs finished" in out, out
    assert attempts.read_text() == "attempt\n"  # a failed run, not a crashed worker: Ray did not run it again
    with sqlite3.connect(db) as connection:
        statuses = dict(connection.execute("select name, status from runs"))
        (error,) = connection.execute("select value from tags where key = 'error'").fetchone()
    connection.close()
    assert statuses["mine/seed0/order0"] == "FAILED" and statuses["naive/seed0/order0"] == "FINISHED", statuses
    assert "RUNNING" not in statuses.values(), statuses
    assert error.startswith("ended by sys.exit(None) in module 'exits_in_a_hook' (") and "exits_in_a_hook.py:" in error, error


def test_a_task_wrapper_turns_only_an_exit_into_an_error_naming_where_it_came_from():
    """What a Ray task (a grid's run or a search's trials) raises: an exit from user code as an ordinary error, reported as
    its own text; other errors and Ctrl-C (``ray.cancel``) as they are."""
    import sys

    from cl_harness.grid.executors.ray_tasks import UserCodeExit, exits_as_errors, task_error

    def leave(code):
        sys.exit(code)

    def fail(error):
        raise error

    with pytest.raises(UserCodeExit) as info:
        exits_as_errors(leave, 3)
    assert task_error(info.value).startswith("ended by sys.exit(3) in module 'test_user_code_exits' (") and "Traceback" not in str(info.value)
    for error in (ValueError("bad value"), KeyboardInterrupt()):
        with pytest.raises(type(error)):
            exits_as_errors(fail, error)
    assert task_error(ValueError("bad value")) == "ValueError: bad value"
    assert exits_as_errors(max, 2, 5) == 5


def test_an_error_in_a_hook_fails_that_run_with_one_line_and_the_grid_goes_on(workplace, tiny_bert, capsys):
    # It stopped the whole comparison with a traceback, and the runs after it never trained.
    flag = workplace / "broken"
    flag.touch()
    mine = {"name": "mine", "plugins": ["naive", {"raises_in_a_hook:Plugin": {"fail_while": str(flag)}}]}
    experiment = write_experiment(workplace, tiny_bert, [mine, "naive"])
    db = workplace / "mlflow.db"
    command = ["run", str(experiment), "--no-progress", "--tracking-uri", f"sqlite:///{db}"]
    assert main(command) == 1
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert "== mine/seed0/order0: FAILED" in out and "1 of 2 runs finished" in out and "Traceback" not in out, out
    line = next(line for line in out.splitlines() if "anchor shape mismatch" in line)
    assert f"ValueError: anchor shape mismatch (raised at {workplace / 'raises_in_a_hook.py'}:" in line, line
    assert "in after_training_exp); traceback in " in line, line
    (saved,) = workplace.glob("runs/*/*/mine-*/error.txt")
    assert "Traceback (most recent call last)" in saved.read_text() and "anchor shape mismatch" in saved.read_text()
    with sqlite3.connect(db) as connection:
        statuses = dict(connection.execute("select name, status from runs where name like '%/seed0/order0'"))
    connection.close()
    assert statuses == {"mine/seed0/order0": "FAILED", "naive/seed0/order0": "FINISHED"}, statuses
    flag.unlink()  # the user fixes the hook: the same command trains the failed run, the finished one is skipped
    assert main(command) == 0
    assert "2 of 2 runs finished" in capsys.readouterr().out and not saved.exists()


def test_an_error_whose_message_cannot_be_printed_still_fails_only_its_run():
    # Its str() raised inside the error handling: a traceback, and the run left RUNNING.
    from cl_harness.errors import error_line

    class Unprintable(Exception):
        def __str__(self):
            raise RuntimeError("str fails")

    try:
        raise Unprintable()
    except Unprintable as exc:
        line = error_line(exc)
    assert line.startswith("Unprintable: (its message cannot be printed) (raised at ") and "in test_an_error_whose" in line
