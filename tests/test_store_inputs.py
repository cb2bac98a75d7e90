"""Bad tracking stores and output folders: one short message, exit 3 for the store (2 for a flag), nothing written.

Someone else's SQLite database, an in-memory database, an artifact folder that is a file, a server that
does not answer, no store at all where a command only reads, and an ``--out`` that is a file.
"""

from __future__ import annotations

import re
import shutil
import sqlite3
from pathlib import Path

import pytest

from cl_harness.cli import main
from cl_harness.tracking import schema
from cl_harness.tracking.store import open_store
from cl_harness.tracking.store_guard import (
    StoreUnavailableError,
    UriSource,
    is_in_memory_sqlite,
    probe_store,
    sqlite_db_path,
)
from conftest import write_demo_stream, write_experiment
from mlflow_helpers import free_port

IN_MEMORY_URIS = [
    "sqlite:///:memory:",
    "sqlite+pysqlite:///:memory:",
    "sqlite:///file::memory:?cache=shared",
    "sqlite:///file:scratch?mode=memory&cache=shared&uri=true",
]
READ_ONLY_COMMANDS = {
    "compare": ["compare", "tiny"],
    "search-report": ["search-report", "tiny"],
    "ui": ["ui", "--port", "0"],  # the port is replaced by a free one
}


def one_line_error(err: str) -> str:
    """The message, checked to be one line, no traceback."""
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert err.count("\n") == 1, err
    return err


def table_names(db: Path) -> set[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        return {name for (name,) in connection.execute("select name from sqlite_master where type = 'table'")}


def run_statuses(db: Path) -> list[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        return [status for (status,) in connection.execute("select status from runs")]


@pytest.fixture
def work(tmp_path, monkeypatch):
    """An empty working folder (cwd), no $MLFLOW_TRACKING_URI and no proxy."""
    folder = tmp_path / "work"
    folder.mkdir()
    monkeypatch.chdir(folder)
    for var in ("MLFLOW_TRACKING_URI", "http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    return folder


@pytest.fixture
def experiment(work, tiny_bert) -> Path:
    """A one-run experiment on the tiny BERT (its runs under work/runs)."""
    write_demo_stream(work, per_class=4)
    return write_experiment(work, tiny_bert, ["naive"])


@pytest.fixture(scope="module")
def template_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with experiment ``tiny`` (created once; tests copy it)."""
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("template")
    MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db").create_experiment(
        "tiny", artifact_location=(folder / schema.ARTIFACTS_FOLDER / "tiny").as_uri()
    )
    return folder / "mlflow.db"


def foreign_database(path: Path) -> Path:
    """Someone's ordinary SQLite database: a customers table with a row."""
    with sqlite3.connect(path) as connection:
        connection.execute("create table customers (id integer primary key, name text)")
        connection.execute("insert into customers (name) values ('Ada')")
    connection.close()
    return path


# --- A: someone else's SQLite database ---------------------------------------------------------------


@pytest.mark.parametrize("command", ["run", "compare", "search-report"])
def test_someone_elses_sqlite_database_is_refused_and_left_as_it_was(command, work, experiment, capsys):
    db = foreign_database(work / "other.db")
    before = db.read_bytes()
    argv = {"run": ["run", str(experiment), "--no-progress"], "compare": ["compare", "tiny"],
            "search-report": ["search-report", "tiny"]}[command]

    assert main([*argv, "--tracking-uri", f"sqlite:///{db}"]) == 3
    err = one_line_error(capsys.readouterr().err)
    assert f"--tracking-uri: {db} is a SQLite database but not an MLflow store (it has tables customers)" in err
    assert "give a new file or an MLflow store" in err
    assert db.read_bytes() == before and table_names(db) == {"customers"}
    assert sorted(p.name for p in work.iterdir()) == ["experiment.yaml", "other.db", "stream.yaml"]  # no lock, no artifacts


@pytest.mark.parametrize("tables", [("runs", "metrics"), ("alembic_version", "experiments", "runs", "tags", "params")])
def test_a_database_with_some_of_mlflows_table_names_is_not_written_to(tables, work, experiment, capsys):
    """Someone's database whose tables are named as MLflow's (but are not all of them) is refused and left as it was."""
    db = work / "mine.db"
    with sqlite3.connect(db) as connection:
        for table in tables:
            connection.execute(f"create table {table} (id integer primary key, note text)")
        connection.execute(f"insert into {tables[0]} (note) values ('keep me')")
    connection.close()
    before = db.read_bytes()

    for argv in (["run", str(experiment), "--no-progress"], ["compare", "tiny"]):
        assert main([*argv, "--tracking-uri", f"sqlite:///{db}"]) == 3
        err = one_line_error(capsys.readouterr().err)
        assert f"{db} is a SQLite database but not an MLflow store" in err
    with pytest.raises(StoreUnavailableError, match="not an MLflow store"):  # also where the store would be created
        open_store(f"sqlite:///{db}")
    assert db.read_bytes() == before and table_names(db) == set(tables)
    assert not (work / "runs").exists() and not (work / schema.ARTIFACTS_FOLDER).exists()


def test_a_new_file_an_empty_database_and_an_mlflow_store_are_accepted(tmp_path, template_store):
    (tmp_path / "zero.db").write_bytes(b"")
    sqlite3.connect(tmp_path / "empty.db").close()
    for name in ("new.db", "zero.db", "empty.db"):
        probe_store(f"sqlite:///{tmp_path / name}")  # a store is created there
    probe_store(f"sqlite:///{template_store}")
    probe_store(f"sqlite:///{template_store}", writes=False)


# --- B: an in-memory database ------------------------------------------------------------------------


@pytest.mark.parametrize("uri", IN_MEMORY_URIS)
def test_an_in_memory_store_is_refused(uri, work, capsys):
    assert is_in_memory_sqlite(uri) and sqlite_db_path(uri) is None
    assert main(["compare", "tiny", "--tracking-uri", uri]) == 3
    err = one_line_error(capsys.readouterr().err)
    assert "--tracking-uri: " in err and "is an in-memory SQLite store: it keeps nothing after the command" in err
    with pytest.raises(StoreUnavailableError, match="in-memory"):
        probe_store(uri)


def test_run_refuses_an_in_memory_store_before_training(work, experiment, capsys):
    assert main(["run", str(experiment), "--no-progress", "--tracking-uri", "sqlite:///:memory:"]) == 3
    assert "keeps nothing after the command" in one_line_error(capsys.readouterr().err)
    assert not (work / "runs").exists()


def test_a_driver_in_the_sqlite_scheme_still_names_a_local_file():
    assert sqlite_db_path("sqlite+pysqlite:///mlruns/m.db?timeout=5") == Path("mlruns/m.db")
    assert not is_in_memory_sqlite("sqlite:///mlruns/m.db") and not is_in_memory_sqlite("http://host:5000")


# --- C: the artifact folder is in the way ------------------------------------------------------------


def test_an_artifact_folder_that_is_a_file_stops_run_before_any_run_is_opened(work, experiment, template_store, capsys):
    db = work / "store" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(template_store, db)
    (db.parent / schema.ARTIFACTS_FOLDER).write_text("a file where the artifact folder was\n")

    assert main(["run", str(experiment), "--no-progress", "--restart", "--tracking-uri", f"sqlite:///{db}"]) == 3
    err = one_line_error(capsys.readouterr().err)
    assert f"--tracking-uri: the store's artifact folder {db.parent / schema.ARTIFACTS_FOLDER} is a file, not a folder" in err
    assert run_statuses(db) == []


@pytest.mark.parametrize("dangling", ["artifacts", "folder"])
def test_a_symbolic_link_to_nothing_in_the_stores_path_stops_run_before_training(dangling, work, experiment, capsys):
    store = work / "store"
    if dangling == "folder":
        store.symlink_to(work / "gone")
        where, link = store / schema.ARTIFACTS_FOLDER, store
    else:
        store.mkdir()
        (store / schema.ARTIFACTS_FOLDER).symlink_to(work / "unmounted" / "artifacts")
        where = link = store / schema.ARTIFACTS_FOLDER
    assert main(["run", str(experiment), "--no-progress", "--tracking-uri", f"sqlite:///{store}/mlflow.db"]) == 3
    err = one_line_error(capsys.readouterr().err)
    assert f"{link} is a symbolic link to " in err and "which does not exist; create the target, remove the link" in err
    assert str(where.parent) in err and not (work / "runs").exists() and not (work / "gone").exists()


@pytest.mark.parametrize(("uri", "package"), [("mysql+pymysql://user@db.example/mlflow", "pymysql"),
                                              ("mssql+pyodbc://db.example/mlflow", "pyodbc")])
def test_a_database_store_without_its_driver_is_named_before_anything_else(uri, package, work, experiment, capsys):
    pytest.importorskip("sqlalchemy")
    import importlib.util

    if importlib.util.find_spec(package) is not None:
        pytest.skip(f"{package} is installed here")
    assert main(["run", str(experiment), "--no-progress", "--tracking-uri", uri]) == 3
    err = one_line_error(capsys.readouterr().err)
    assert f"needs the Python package '{package}', which is not installed" in err and f"pip install '{package}'" in err
    assert not (work / "runs").exists()


def test_an_unknown_database_driver_is_a_config_error(work, capsys):
    assert main(["compare", "tiny", "--tracking-uri", "postgresql+nosuchdriver://db.example/mlflow"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --tracking-uri: unknown database driver in 'postgresql+nosuchdriver'") and "Traceback" not in err


def test_a_failing_database_call_prints_one_line_not_mlflows_log(work, template_store, capfd):
    """MLflow logs a failed SQL call with its traceback before raising it; the user sees the harness's line only."""
    db = work / "mlflow.db"
    shutil.copy(template_store, db)
    with sqlite3.connect(db) as connection:
        connection.execute("alter table experiments rename column lifecycle_stage to stage")  # read by every lookup
    connection.close()
    capfd.readouterr()
    code = main(["compare", "tiny", "--tracking-uri", f"sqlite:///{db}"])
    err = capfd.readouterr().err
    assert code == 3, err
    assert one_line_error(err).startswith("error: the tracking store failed") and "SQLAlchemy" not in err.split("(", 1)[0]


def test_an_artifact_write_that_fails_ends_the_runs_failed_with_one_line(work, experiment, tmp_path, capsys):
    from mlflow import MlflowClient

    blocker = tmp_path / "blocked"
    blocker.write_text("a file where an experiment's artifact folder should be\n")
    db = work / "store" / "mlflow.db"
    db.parent.mkdir()
    MlflowClient(tracking_uri=f"sqlite:///{db}").create_experiment("tiny", artifact_location=(blocker / "tiny").as_uri())
    capsys.readouterr()

    assert main(["run", str(experiment), "--no-progress", "--tracking-uri", f"sqlite:///{db}"]) == 3
    err = one_line_error(capsys.readouterr().err)
    assert "cannot be written to" in err and f"{blocker} is a file, not a folder" in err
    statuses = run_statuses(db)
    assert statuses and schema.RUNNING not in statuses and set(statuses) == {schema.FAILED}


# --- D: a server that does not answer ----------------------------------------------------------------


def test_an_unreachable_server_from_the_flag_is_a_store_problem_named_by_the_flag(work, experiment, capsys):
    uri = f"http://127.0.0.1:{free_port()}"
    assert main(["run", str(experiment), "--no-progress", "--tracking-uri", uri]) == 3
    err = one_line_error(capsys.readouterr().err)
    assert f"error: --tracking-uri: MLflow tracking server {uri} is not reachable" in err and "tracking.uri" not in err


def test_an_unreachable_server_from_the_yaml_names_the_key_file_and_line(work, experiment, capsys):
    uri = f"http://127.0.0.1:{free_port()}"
    text = experiment.read_text()
    experiment.write_text(text + f"tracking:\n  uri: {uri}\n")
    line = text.count("\n") + 2
    assert main(["run", str(experiment), "--no-progress"]) == 3
    err = one_line_error(capsys.readouterr().err)
    assert f"error: {experiment}:{line}: tracking.uri: MLflow tracking server {uri} is not reachable" in err
    assert "set tracking.uri to another store" in err


def test_an_unreachable_server_from_the_variable_names_the_variable(work, experiment, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    assert main(["compare", "tiny"]) == 3
    assert "error: $MLFLOW_TRACKING_URI: MLflow tracking server" in one_line_error(capsys.readouterr().err)


def test_a_read_only_command_names_the_flag_of_a_bad_uri(work, capsys):
    assert main(["compare", "tiny", "--tracking-uri", "foo://bar"]) == 2
    assert "error: --tracking-uri: unknown tracking URI scheme 'foo'" in capsys.readouterr().err


def test_uri_sources_say_how_to_choose_another_store():
    assert UriSource("--tracking-uri").prefix() == "--tracking-uri: "
    assert UriSource("tracking.uri", "e.yaml", 7).prefix() == "e.yaml:7: tracking.uri: "
    assert UriSource().prefix() == ""
    assert UriSource("tracking.uri").other_store() == "set tracking.uri to another store"


# --- E: read-only commands create no store -----------------------------------------------------------


def _read_only_argv(command: str) -> list[str]:
    argv = list(READ_ONLY_COMMANDS[command])
    return [str(free_port()) if a == "0" else a for a in argv]


@pytest.mark.parametrize("command", sorted(READ_ONLY_COMMANDS))
def test_a_read_only_command_creates_no_store(command, work, capsys):
    db = work / "nonexistent-dir" / "m.db"
    assert main([*_read_only_argv(command), "--tracking-uri", f"sqlite:///{db}"]) == 3
    err = one_line_error(capsys.readouterr().err)
    assert f"--tracking-uri: no MLflow store at {db}" in err and "INFO" not in err
    assert list(work.iterdir()) == []


@pytest.mark.parametrize("command", sorted(READ_ONLY_COMMANDS))
def test_a_read_only_command_does_not_turn_an_empty_file_into_a_store(command, work, capsys):
    db = work / "m.db"
    db.write_bytes(b"")
    assert main([*_read_only_argv(command), "--tracking-uri", f"sqlite:///{db}"]) == 3
    assert f"no MLflow store at {db}" in one_line_error(capsys.readouterr().err)
    assert db.read_bytes() == b"" and sorted(p.name for p in work.iterdir()) == ["m.db"]


def test_the_default_store_is_not_created_by_compare(work, capsys):
    assert main(["compare", "tiny"]) == 3
    assert "no MLflow store at mlruns/mlflow.db" in one_line_error(capsys.readouterr().err)
    assert list(work.iterdir()) == []


# --- F: output folders -------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["compare", "search-report"])
def test_an_out_that_is_a_file_is_refused(command, work, capsys):
    afile = work / "afile"
    afile.write_text("not a folder\n")
    assert main([command, "tiny", "--out", str(afile)]) == 2
    assert one_line_error(capsys.readouterr().err) == f"error: --out: {afile} is a file; give a folder\n"
    assert main([command, "tiny", "--out", str(afile / "sub")]) == 2
    assert f"error: --out: {afile} is a file, so {afile / 'sub'} cannot be created" in one_line_error(capsys.readouterr().err)
    assert afile.read_text() == "not a folder\n"


@pytest.mark.parametrize("command", ["compare", "search-report"])
def test_an_out_that_cannot_be_written_is_refused(command, work, capsys):
    if not Path("/sys/kernel").is_dir():
        pytest.skip("no /sys/kernel here")
    assert main([command, "tiny", "--out", "/sys/kernel/cl-harness-report"]) == 2
    assert re.search(r"^error: --out: cannot write to /sys/kernel: it is not writable", one_line_error(capsys.readouterr().err))


def test_a_default_report_folder_in_the_way_names_the_default(work, capsys):
    (work / "reports").write_text("a file\n")
    assert main(["search-report", "tiny"]) == 2
    assert "error: --out (default): " in one_line_error(capsys.readouterr().err)


@pytest.mark.parametrize("where", ["another store", "child deleted", "parent deleted", "child FAILED in the store"])
def test_a_finished_run_missing_from_the_store_is_refused_not_skipped_out_of_the_table(where, work, experiment, capsys):
    # Skipped as finished, the run was missing from the new parent's table while the command exited 0.
    from mlflow import MlflowClient

    db = work / "mlflow.db"  # absolute: MLflow caches a store by its URI, and a relative one would outlive this test's cwd
    argv = ["run", str(experiment), "--tracking-uri", f"sqlite:///{db}"]
    assert main(argv) == 0
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    (child,) = [r for r in client.search_runs(client.get_experiment_by_name("tiny").experiment_id) if schema.PARENT_RUN_TAG in r.data.tags]
    if where == "another store":
        argv[-1] = f"sqlite:///{work / 'other.db'}"
    elif where == "child deleted":
        client.delete_run(child.info.run_id)
    elif where == "child FAILED in the store":  # set so in the UI or by another tool: skipped, it dropped out of the table
        client.set_terminated(child.info.run_id, "FAILED")
    else:
        client.delete_run(child.data.tags[schema.PARENT_RUN_TAG])
    capsys.readouterr()
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "1 finished run(s) of this comparison whose results are not in" in err and "--restart" in err, err
    want = {"another store": "its parent: run {parent} is not in this store", "parent deleted": "its parent: run {parent} is deleted",
            "child deleted": "naive/seed0/order0: run {child} is deleted",
            "child FAILED in the store": "naive/seed0/order0: run {child} is FAILED in the store"}[where]
    assert want.format(parent=child.data.tags[schema.PARENT_RUN_TAG], child=child.info.run_id) in err, err
    other = work / ("other.db" if where == "another store" else "mlflow.db")
    assert "RUNNING" not in run_statuses(other)
    assert len(run_statuses(other)) == (0 if where == "another store" else 2)  # no new parent opened
    assert main(argv + ["--restart"]) == 0  # trained again, into this store
