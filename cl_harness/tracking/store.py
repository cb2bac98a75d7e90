"""The tracking store: which URI (resolved once), whether it answers, and its experiments."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import TypeVar

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from cl_harness.config.experiment import DEFAULT_TRACKING_URI
from cl_harness.config.names import file_name
from cl_harness.errors import ConfigError, TrackingStoreError
from cl_harness.tracking import schema
from cl_harness.tracking.schema import ARTIFACTS_FOLDER
from cl_harness.tracking.store_guard import (
    UriSource,
    can_create_in,
    parse_uri,
    probe_store,
    sqlite_db_path,
    store_creation_lock,
    uri_source,
)
from cl_harness.tracking.store_guard import check_tracking_reachable as check_tracking_reachable  # its home is store_guard

T = TypeVar("T")


def is_store_failure(exc: BaseException) -> bool:
    """Whether an exception means the tracking store (database, server, disk) failed, rather than the run."""
    import sqlite3

    from requests.exceptions import RequestException
    from sqlalchemy.exc import SQLAlchemyError

    return isinstance(exc, (MlflowException, RequestException, TrackingStoreError, SQLAlchemyError, sqlite3.Error))


def is_disk_failure(exc: BaseException) -> bool:
    """Whether an exception means the disk failed (full, read-only, over quota, or an I/O error)."""
    import errno

    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EIO, errno.EROFS, errno.EDQUOT)


def is_duplicate_key(exc: BaseException) -> bool:
    """Whether a store write failed because another writer inserted the same key first (SQL unique constraint)."""
    text = str(exc)
    return "UNIQUE constraint failed" in text or "IntegrityError" in text or "duplicate key" in text.lower()


def retry_if_raced(write: Callable[[], T], attempts: int = 5) -> T:
    """``write()``, again if it lost an insert race (two processes finishing one grid set the same tag at once).

    MLflow's SQL store sets a tag by looking it up and inserting it when absent; a second writer that looked
    before the first inserted fails on the unique key. Its retry finds the row and updates it.
    """
    import random
    import time

    for attempt in range(1, attempts):
        try:
            return write()
        except MlflowException as exc:
            if not is_duplicate_key(exc):
                raise
        time.sleep(random.uniform(0.01, 0.1) * attempt)  # let the other writer's transaction end
    return write()


def choose_tracking_uri(uri: str | None = None, source: UriSource | None = None) -> str:
    """The tracking URI to use, explicit (even empty) > $MLFLOW_TRACKING_URI > the default, parsed (``parse_uri``); nothing created."""
    chosen = uri if uri is not None else os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    where = source or uri_source(uri)
    parse_uri(chosen, where.key or "tracking.uri", where.file, where.line)  # before anything else parses it
    return chosen


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use (``choose_tracking_uri``); creates a sqlite db's folder."""
    chosen = choose_tracking_uri(uri)
    db = sqlite_db_path(chosen)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    return chosen


def absolute_uri(uri: str) -> str:
    """A local ``sqlite:///relative/path`` made absolute; other URIs unchanged."""
    db = sqlite_db_path(uri)
    if db is None or db.is_absolute():
        return uri
    scheme = uri[: uri.index(":///") + len(":///")]  # sqlite:/// or sqlite+driver:///
    return f"{scheme}{db.resolve()}" + (uri[uri.index("?"):] if "?" in uri else "")


def default_artifact_location(uri: str, experiment_name: str) -> str | None:
    """``file://<db dir>/artifacts/<experiment>`` for a local sqlite store; None elsewhere (the server decides)."""
    db = sqlite_db_path(uri)
    if db is None:
        return None
    return (db.parent.resolve() / ARTIFACTS_FOLDER / file_name(experiment_name)).as_uri()


class FailedSqlCallFilter(logging.Filter):
    """Drops MLflow's log record of a failed database call (its whole traceback); its other records pass (``--verbose``)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("SQLAlchemy database error")


def connect(uri: str) -> MlflowClient:
    """A client of the store at ``uri`` (already resolved; MLflow creates a missing store here: see ``open_store``).

    MLflow logs a failed database call with its whole traceback before raising it; the harness reports the error
    it raises in one line, so those log records are not shown.
    """
    logger = logging.getLogger("mlflow.store.db.utils")
    if not any(isinstance(f, FailedSqlCallFilter) for f in logger.filters):
        logger.addFilter(FailedSqlCallFilter())
    return MlflowClient(tracking_uri=uri)


def open_store(uri: str | None, source: UriSource | None = None, create: bool = True) -> tuple[str, MlflowClient]:
    """Resolve ``uri`` (``choose_tracking_uri``), check the store (one that is missing is created only if ``create``), connect.

    MLflow creates a missing store, and migrates one an older MLflow made, when a client connects: a local store is
    opened under its creation lock, so that processes opening one fresh store at once take turns (the first creates
    it, the others find it made). A store in a folder this process cannot write to is opened without the lock.
    """
    chosen = choose_tracking_uri(uri, source)
    # a local store that is read-only, damaged, someone else's or in the way, or a server that does not answer, fails here
    probe_store(chosen, source or UriSource(), writes=create)
    resolved = resolve_tracking_uri(chosen) if create else chosen
    db = sqlite_db_path(resolved)
    if db is not None and not create and can_create_in(db.parent) is not None:
        db = None  # nothing can be created or migrated there, nor a lock file made
    with store_creation_lock(db):
        return resolved, connect(resolved)


def get_or_create_experiment(client: MlflowClient, name: str, artifact_location: str | None = None) -> str:
    """The id of the experiment called ``name``, created (with ``artifact_location``) if missing."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name, artifact_location=artifact_location)
        except MlflowException as exc:  # created meanwhile by a concurrent run
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise exc
    if experiment.lifecycle_stage == "deleted":
        raise ConfigError(
            f"MLflow experiment {name!r} (id {experiment.experiment_id}) is deleted",
            key="tracking.experiment",
            hint=f"restore it with `mlflow experiments restore --experiment-id {experiment.experiment_id}` "
            "or choose another tracking.experiment",
        )
    return experiment.experiment_id


def experiment_for(client: MlflowClient, uri: str, name: str) -> str:
    """The id of experiment ``name``, created with the store's default artifact location when missing."""
    with store_creation_lock(sqlite_db_path(uri)):  # concurrent first writers of a new SQLite store take turns creating it
        return get_or_create_experiment(client, name, default_artifact_location(uri, name))


def logged_run_problem(client: MlflowClient, run_id: str | None, experiment_id: str, parent_id: str | None = None,
                       finished: bool = False) -> str | None:
    """Why run ``run_id`` is not usable in experiment ``experiment_id`` of this store (under parent run ``parent_id`` when
    given): not in the store, deleted, not FINISHED there (when ``finished``), in another experiment, or under another
    parent; None when it is."""
    try:
        run = client.get_run(run_id) if run_id else None
    except MlflowException:
        run = None
    if run is None:
        return f"run {run_id or '(none)'} is not in this store"
    if run.info.lifecycle_stage != "active":
        return f"run {run_id} is deleted"
    if finished and run.info.status != schema.FINISHED:
        return f"run {run_id} is {run.info.status} in the store"
    if run.info.experiment_id != experiment_id:
        return f"run {run_id} is in another experiment (id {run.info.experiment_id})"
    logged_parent = run.data.tags.get(schema.PARENT_RUN_TAG)
    if parent_id is not None and logged_parent != parent_id:
        return f"run {run_id} is a child of run {logged_parent}, not of this comparison's parent {parent_id}"
    return None


def run_exists(client: MlflowClient, run_id: str) -> bool:
    """Whether ``run_id`` is an active (not deleted) run of the store."""
    try:
        return client.get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False
