"""Fast checks on the tracking store before any run is opened in it, and the lock that serialises its first creation.

A mistyped URI is a config mistake (exit 2, at the key it came from). A store that cannot be used
(a read-only folder, a file where its folder or artifact folder should be, a database file that is
not SQLite or is someone else's SQLite database, an in-memory database, a server that does not
answer, or no store at all where a command only reads) is a store problem (exit 3), found in
milliseconds instead of after MLflow's retries, and before anything is written.
"""

from __future__ import annotations

import errno
import http.client
import os
import re
import sqlite3
import tempfile
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import ParseResult, parse_qs, urlparse, urlunparse

from cl_harness.errors import UNPRINTABLE_CATEGORIES, ConfigError, TrackingStoreError, clip
from cl_harness.tracking.schema import ARTIFACTS_FOLDER, MLFLOW_CORE_TABLES

# Schemes MLflow's tracking stores accept (a ``+driver`` suffix is allowed on database schemes).
STORE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql", "http", "https", "databricks", "databricks-uc", "uc")
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")  # SQLAlchemy stores: each needs its driver package
DRIVER_PACKAGES = {"psycopg2": "psycopg2-binary", "MySQLdb": "mysqlclient", "psycopg": "psycopg[binary]"}  # module -> pip name
SQLITE_HEADER = b"SQLite format 3\x00"
STORE_LOCK_TIMEOUT_S = 120.0
SERVER_TIMEOUT_S = 3.0
_SQLITE_PREFIX = re.compile(r"sqlite(\+[A-Za-z0-9_]+)?:///", re.IGNORECASE)
_MAX_TABLES_NAMED = 5
URI_HINT = "e.g. sqlite:///mlruns/mlflow.db (a local file), or http://host:5000 (a tracking server)"


class StoreUnavailableError(TrackingStoreError):
    """The tracking store cannot be used as it is (exit 3): the message says what to fix."""


@dataclass(frozen=True)
class UriSource:
    """Where a tracking URI came from (a flag, a variable, or a YAML key with file and line), for messages to name."""

    key: str | None = None
    file: str | None = None
    line: int | None = None

    def prefix(self) -> str:
        """``file:line: key: `` (the parts known), or nothing for the default store."""
        where = self.file + (f":{self.line}" if self.line else "") + ": " if self.file else ""
        return where + (f"{self.key}: " if self.key else "")

    def other_store(self) -> str:
        """How to choose another store, in the terms of where this one was given."""
        if self.key == "$MLFLOW_TRACKING_URI":
            return "set $MLFLOW_TRACKING_URI to another store"
        if self.key and not self.key.startswith("-"):
            return f"set {self.key} to another store"
        return "choose another store with --tracking-uri"


def uri_source(cli_uri: str | None) -> UriSource:
    """The source of the URI of a command without an experiment file: ``--tracking-uri``, the variable or the default."""
    if cli_uri is not None:
        return UriSource("--tracking-uri")
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return UriSource("$MLFLOW_TRACKING_URI")
    return UriSource()


def sqlite_location(uri: str) -> str | None:
    """The database part (before any ``?``) of a ``sqlite[+driver]:///`` URI; None for other stores."""
    match = _SQLITE_PREFIX.match(uri)
    return uri[match.end():].split("?", 1)[0] if match else None


def is_in_memory_sqlite(uri: str) -> bool:
    """Whether ``uri`` is an SQLite database held in memory (``:memory:``, ``file::memory:``, ``mode=memory``)."""
    location = sqlite_location(uri)
    if location is None:
        return False
    query = parse_qs(uri.split("?", 1)[1]) if "?" in uri else {}
    return location == ":memory:" or location.startswith("file::memory:") or "memory" in query.get("mode", [])


def sqlite_db_path(uri: str) -> Path | None:
    """The database file of a local ``sqlite:///path`` URI (relative to the cwd unless absolute); None otherwise."""
    location = sqlite_location(uri)
    if not location or is_in_memory_sqlite(uri):
        return None
    return Path(location)


def public_uri(uri: str) -> str:
    """The tracking URI without any user:password part."""
    parts = parse_uri(uri)
    if not parts.netloc or "@" not in parts.netloc:
        return uri
    return urlunparse(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def uri_error(uri: str, message: str, key: str, file: str | None = None, line: int | None = None) -> ConfigError:
    return ConfigError(f"{message} (got {clip(uri, 120)!r})", file=file, line=line, key=key, hint=URI_HINT)


def parse_uri(uri: str, key: str = "tracking.uri", file: str | None = None, line: int | None = None) -> ParseResult:
    """A user's tracking URI parsed (the one way to): empty, control characters or unparsable (bad IPv6 host, port) is a ConfigError at ``key``."""
    if not uri or not uri.strip():
        raise ConfigError(f"the tracking URI is empty (got {uri!r}); leave it out for the default store ($MLFLOW_TRACKING_URI, "
                          "else sqlite:///mlruns/mlflow.db)", file=file, line=line, key=key, hint=URI_HINT)
    bad = next(((i, c) for i, c in enumerate(uri) if unicodedata.category(c) in UNPRINTABLE_CATEGORIES), None)
    if bad is not None:  # urlparse drops tabs and newlines, and a message would print them raw
        raise uri_error(uri, f"the tracking URI holds the control character {bad[1]!r} (character {bad[0] + 1}); remove it",
                        key, file, line)
    try:
        parsed = urlparse(uri)
        if parsed.scheme.lower() in ("http", "https"):
            parsed.port  # noqa: B018 - raises ValueError for a port that is not a number in 0..65535
    except ValueError as exc:
        raise uri_error(uri, f"the tracking URI is not a valid URI ({clip(exc, 80)})", key, file, line) from None
    return parsed


def check_store_uri(uri: str, key: str = "tracking.uri", file: str | None = None, line: int | None = None) -> None:
    """Refuse a tracking URI no store accepts: unparsable (``parse_uri``), an unknown scheme, a bare path, or sqlite without ``sqlite:///``."""
    parsed = parse_uri(uri, key, file, line)
    if uri.strip().lower() in ("databricks", "databricks-uc", "uc"):  # a profile from the environment
        return
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


def probe_sqlite_store(db: Path, source: UriSource = UriSource(), writes: bool = True) -> None:
    """Raise StoreUnavailableError when the SQLite store at ``db`` cannot be used: created and written (``writes``), or read."""
    where, other = source.prefix(), source.other_store()
    check_links(db.parent, "the tracking store's folder", source)
    if not writes and not db.exists():
        raise StoreUnavailableError(f"{where}no MLflow store at {db} (no such file); {other}, e.g. the one `cl-harness run` wrote to")
    folder = db.parent
    existing = _first_existing(folder)
    if not existing.is_dir():
        raise StoreUnavailableError(f"{where}the tracking store {db} cannot be created: {existing} is a file, not a folder; "
                                    f"move it away or {other}")
    if writes:
        why = can_create_in(existing)
        if why is not None:
            raise StoreUnavailableError(f"{where}the tracking store folder {existing} is not writable ({why}); make it writable or {other}")
    if db.exists():
        if not db.is_file():
            raise StoreUnavailableError(f"{where}the tracking store {db} is not a file; {other}")
        try:
            with db.open("r+b" if writes else "rb") as file:
                header = file.read(len(SQLITE_HEADER))
        except OSError as exc:
            raise StoreUnavailableError(f"{where}the tracking store {db} cannot be opened ({exc.strerror}); {other}") from None
        if header and header != SQLITE_HEADER:
            raise StoreUnavailableError(
                f"{where}the tracking store {db} is not an SQLite database (corrupt or another file); move it away to start "
                f"a new store, or {other}"
            )
        tables = sqlite_tables(db, source) if header else set()
        if tables and not MLFLOW_CORE_TABLES <= tables and tables & MLFLOW_CORE_TABLES:
            tables = _tables_once_created(db, source, tables)  # another process may be creating the store right now
        if tables and not MLFLOW_CORE_TABLES <= tables:
            named = ", ".join(sorted(tables)[:_MAX_TABLES_NAMED]) + (", ..." if len(tables) > _MAX_TABLES_NAMED else "")
            raise StoreUnavailableError(f"{where}{db} is a SQLite database but not an MLflow store (it has tables "
                                        f"{clip(named, 160)}); give a new file or an MLflow store")
        if not tables and not writes:
            raise StoreUnavailableError(f"{where}no MLflow store at {db} (the database is empty); {other}, "
                                        "e.g. the one `cl-harness run` wrote to")
    if writes:
        check_artifact_folder(folder / ARTIFACTS_FOLDER, source)


def _tables_once_created(db: Path, source: UriSource, tables: set[str]) -> set[str]:
    """The tables of ``db`` once a process creating the store there (holding its creation lock) is done.

    A store being created has some of MLflow's tables and not yet the others, as someone else's database may: only
    what is there once no process creates it tells them apart. Without the lock (a read-only folder), ``tables``.
    """
    try:
        with store_creation_lock(db):
            return sqlite_tables(db, source)
    except OSError:
        return tables


def dangling_link(path: Path) -> Path | None:
    """``path`` or the first of its ancestors that is a symbolic link to nothing; None if there is none."""
    for candidate in [*reversed(path.parents), path]:
        if candidate.is_symlink() and not candidate.exists():
            return candidate
    return None


def check_links(path: Path, what: str, source: UriSource) -> None:
    """Refuse ``path`` when it or a folder above it is a symbolic link whose target does not exist."""
    link = dangling_link(path)
    if link is not None:
        raise StoreUnavailableError(f"{source.prefix()}{what} {path} cannot be used: {link} is a symbolic link to "
                                    f"{clip(os.readlink(link), 160)}, which does not exist; create the target, remove the "
                                    f"link, or {source.other_store()}")


def check_artifact_folder(artifacts: Path, source: UriSource = UriSource()) -> None:
    """The artifact folder beside a local store must be a writable folder, or be creatable."""
    where, other = source.prefix(), source.other_store()
    check_links(artifacts, "the store's artifact folder", source)
    if artifacts.exists() and not artifacts.is_dir():
        raise StoreUnavailableError(f"{where}the store's artifact folder {artifacts} is a file, not a folder; move it away or {other}")
    if artifacts.is_dir():
        why = can_create_in(artifacts)
        if why is not None:
            raise StoreUnavailableError(f"{where}the store's artifact folder {artifacts} is not writable ({why}); "
                                        f"make it writable or {other}")


def sqlite_tables(db: Path, source: UriSource = UriSource()) -> set[str]:
    """The names of the tables of the SQLite database ``db`` (opened read-only); StoreUnavailableError when damaged."""
    try:
        connection = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            rows = connection.execute("select name from sqlite_master where type = 'table'").fetchall()
        finally:
            connection.close()
    except sqlite3.DatabaseError as exc:
        raise StoreUnavailableError(
            f"{source.prefix()}the tracking store {db} is damaged ({clip(exc, 80)}); move it away to start a new store, "
            "or restore a backup"
        ) from None
    return {name for (name,) in rows if not name.startswith("sqlite_")}


def check_tracking_reachable(uri: str, timeout: float = SERVER_TIMEOUT_S, source: UriSource = UriSource()) -> None:
    """Raise StoreUnavailableError if an http(s) tracking server does not answer ``<uri>/health``; no-op for other stores."""
    if parse_uri(uri, source.key or "tracking.uri", source.file, source.line).scheme.lower() not in ("http", "https"):
        return
    url = uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return
    except urllib.error.HTTPError as exc:  # the server answered (even 404/401): it is reachable
        exc.close()
        return
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise StoreUnavailableError(
            f"{source.prefix()}MLflow tracking server {public_uri(uri)} is not reachable ({clip(reason, 80)}); start it with "
            f"`mlflow server --host 127.0.0.1 --port 5000` or {source.other_store()}"
        ) from None


def probe_store(uri: str, source: UriSource = UriSource(), writes: bool = True) -> None:
    """Check the URI, then the store it names: a local SQLite file and folders, or a server's answer (StoreUnavailableError)."""
    check_store_uri(uri, source.key or "tracking.uri", source.file, source.line)
    if is_in_memory_sqlite(uri):
        raise StoreUnavailableError(f"{source.prefix()}{clip(uri, 120)} is an in-memory SQLite store: it keeps nothing "
                                    "after the command; give a database file, e.g. sqlite:///mlruns/mlflow.db")
    check_database_driver(uri, source)
    db = sqlite_db_path(uri)
    if db is not None:
        probe_sqlite_store(db, source, writes)
    check_tracking_reachable(uri, source=source)


def check_database_driver(uri: str, source: UriSource = UriSource()) -> None:
    """Refuse a database URI whose SQLAlchemy dialect or driver package is not installed (StoreUnavailableError)."""
    scheme = parse_uri(uri, source.key or "tracking.uri", source.file, source.line).scheme.lower()
    if scheme.split("+", 1)[0] not in DATABASE_SCHEMES:
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        dialect = make_url(uri).get_dialect()
        (getattr(dialect, "import_dbapi", None) or dialect.dbapi)()  # import_dbapi from SQLAlchemy 2.0 on
    except (NoSuchModuleError, ArgumentError) as exc:
        raise ConfigError(f"unknown database driver in {clip(scheme, 40)!r} ({clip(exc, 120)})", key=source.key or "tracking.uri",
                          file=source.file, line=source.line, hint="e.g. postgresql://, postgresql+psycopg2://, mysql+pymysql://") from None
    except ImportError as exc:
        missing = exc.name or clip(exc, 60)
        package = DRIVER_PACKAGES.get(missing.split(".")[0], missing)
        raise StoreUnavailableError(f"{source.prefix()}the {scheme} tracking store needs the Python package {package!r}, which "
                                    f"is not installed (no module {missing!r}); pip install '{package}', or {source.other_store()}") from None


@contextmanager
def artifact_writes(run_id: str) -> Iterator[None]:
    """Turn a local artifact folder that is in the way (a file, not writable) into StoreUnavailableError, naming the path."""
    try:
        yield
    except (NotADirectoryError, FileExistsError, PermissionError) as exc:
        path = Path(exc.filename) if exc.filename else None
        blocker = _first_existing(path) if path is not None else None
        if blocker is not None and blocker.exists() and not blocker.is_dir():
            why = f"{blocker} is a file, not a folder; move it away"
        else:
            why = f"{exc.strerror or type(exc).__name__}; make it writable"
        raise StoreUnavailableError(f"the artifacts of run {run_id} cannot be written to {path}: {why}, "
                                    "or choose another store with --tracking-uri") from None
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM):
            raise
        raise StoreUnavailableError(f"the artifacts of run {run_id} cannot be written to {exc.filename} ({exc.strerror}); "
                                    "make the folder writable or choose another store with --tracking-uri") from None


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
