"""Fast checks on the tracking store before any run is opened in it, and the lock that serialises its first creation.

A mistyped URI is a config mistake (exit 2, at the key it came from). A local store that cannot
be used (a read-only folder, a file where its folder should be, a database file that is not
SQLite) is a store outage (exit 3), found in milliseconds instead of after MLflow's retries.
"""

from __future__ import annotations

import os
import sqlite3
import tempfile
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from cl_harness.errors import ConfigError, TrackingStoreError, clip

# Schemes MLflow's tracking stores accept (a ``+driver`` suffix is allowed on database schemes).
STORE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "databricks-uc", "uc")
SQLITE_HEADER = b"SQLite format 3\x00"
STORE_LOCK_TIMEOUT_S = 120.0


class StoreUnavailableError(TrackingStoreError):
    """The local tracking store cannot be used as it is (exit 3): the message says what to fix."""


def uri_error(uri: str, message: str, key: str, file: str | None = None, line: int | None = None) -> ConfigError:
    return ConfigError(
        f"{message} (got {clip(uri, 120)!r})", file=file, line=line, key=key,
        hint="e.g. sqlite:///mlruns/mlflow.db (a local file), or http://host:5000 (a tracking server)",
    )


def check_store_uri(uri: str, key: str = "tracking.uri", file: str | None = None, line: int | None = None) -> None:
    """Refuse a tracking URI no store accepts: an unknown scheme, a bare path, or a sqlite URI without ``sqlite:///``."""
    if not uri or not uri.strip():
        raise uri_error(uri, "the tracking URI is empty", key, file, line)
    if uri.strip().lower() in ("databricks", "databricks-uc", "uc"):  # a profile from the environment
        return
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower().split("+", 1)[0]
    if scheme == "file":
        raise uri_error(uri, "MLflow 3 no longer writes to a file store; use a database store", key, file, line)
    if not parsed.scheme or len(parsed.scheme) == 1:  # a bare path (or a Windows drive letter)
        raise uri_error(uri, "the tracking URI has no scheme; a bare folder is not a store MLflow accepts", key, file, line)
    if scheme not in STORE_SCHEMES:
        raise uri_error(uri, f"unknown tracking URI scheme {clip(parsed.scheme, 40)!r}; known: {', '.join(STORE_SCHEMES)}", key, file, line)
    if scheme == "sqlite":
        rest = uri.split(":", 1)[1]
        if not rest.startswith("///") or not rest[3:].split("?", 1)[0]:
            raise uri_error(uri, "a sqlite tracking URI is sqlite:/// followed by the database file's path", key, file, line)
    if scheme in ("http", "https") and not parsed.netloc:
        raise uri_error(uri, "an http(s) tracking URI needs a host, e.g. http://127.0.0.1:5000", key, file, line)


def _first_existing(path: Path) -> Path:
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def can_create_in(folder: Path) -> str | None:
    """None if a file can be created in ``folder``, else why not (a real write, so root and read-only mounts are covered)."""
    try:
        handle, name = tempfile.mkstemp(dir=folder, prefix=".cl-harness-probe-")
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    os.close(handle)
    os.unlink(name)
    return None


def probe_sqlite_store(db: Path) -> None:
    """Raise StoreUnavailableError when the SQLite store at ``db`` cannot be created, written or read as SQLite."""
    folder = db.parent
    existing = _first_existing(folder)
    if not existing.is_dir():
        raise StoreUnavailableError(
            f"the tracking store {db} cannot be created: {existing} is a file, not a folder; move it away or choose "
            "another store with --tracking-uri"
        )
    why = can_create_in(existing)
    if why is not None:
        raise StoreUnavailableError(
            f"the tracking store folder {existing} is not writable ({why}); make it writable or choose another "
            "store with --tracking-uri"
        )
    if db.exists():
        if not db.is_file():
            raise StoreUnavailableError(f"the tracking store {db} is not a file; choose another store with --tracking-uri")
        try:
            with db.open("r+b") as file:
                header = file.read(len(SQLITE_HEADER))
        except OSError as exc:
            raise StoreUnavailableError(f"the tracking store {db} cannot be opened for writing ({exc.strerror})") from None
        if header and header != SQLITE_HEADER:
            raise StoreUnavailableError(
                f"the tracking store {db} is not an SQLite database (corrupt or another file); move it away to start "
                "a new store, or choose another with --tracking-uri"
            )
        if header:
            _check_sqlite_readable(db)


def _check_sqlite_readable(db: Path) -> None:
    try:
        connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            connection.execute("select count(*) from sqlite_master").fetchone()
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        raise StoreUnavailableError(
            f"the tracking store {db} is damaged ({clip(exc, 80)}); move it away to start a new store, or restore a backup"
        ) from None


def probe_store(uri: str) -> None:
    """Check the URI, then a local SQLite store's folder and file (StoreUnavailableError); other stores are left to MLflow."""
    check_store_uri(uri)
    prefix = "sqlite:///"
    if uri.lower().startswith(prefix):
        path = uri[len(prefix):].split("?", 1)[0]
        if path and path != ":memory:":
            probe_sqlite_store(Path(path))


@contextmanager
def store_creation_lock(db: Path | None):
    """Hold a lock file beside a local SQLite store while it may be created, so concurrent first writers take turns."""
    if db is None:
        yield
        return
    from filelock import FileLock, Timeout

    lock = FileLock(str(db) + ".lock")
    try:
        lock.acquire(timeout=STORE_LOCK_TIMEOUT_S)
    except Timeout:
        raise StoreUnavailableError(f"another process has held {lock.lock_file} for {STORE_LOCK_TIMEOUT_S:.0f} s") from None
    try:
        yield
    finally:
        lock.release()
