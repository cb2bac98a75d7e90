"""MLflow logging through ``mlflow.MlflowClient`` only: no fluent API, no active-run global state."""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import subprocess
import time
import unicodedata
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, is_dataclass
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import urlparse

import yaml
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import (
    MAX_ENTITY_KEY_LENGTH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_VAL_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_VAL_LENGTH,
)

from cl_harness.config.experiment import DEFAULT_TRACKING_URI
from cl_harness.errors import ConfigError, TrackingStoreError

TRACKED_PACKAGES = ("torch", "transformers", "avalanche-lib", "mlflow", "datasets", "cl-harness")
END_STATUSES = ("FINISHED", "FAILED", "KILLED")
PARENT_RUN_TAG = "mlflow.parentRunId"


def is_store_failure(exc: BaseException) -> bool:
    """Whether an exception means the tracking store (database, server, disk) failed, rather than the run."""
    import sqlite3

    from requests.exceptions import RequestException
    from sqlalchemy.exc import SQLAlchemyError

    return isinstance(exc, (MlflowException, RequestException, TrackingStoreError, SQLAlchemyError, sqlite3.Error))


SERVER_HINT = "start it with `mlflow server --host 127.0.0.1 --port 5000` or drop --tracking-uri to use the local store"

_BAD_KEY_CHARS = re.compile(r"[^A-Za-z0-9_\-. /]")
_BAD_DIR_CHARS = re.compile(r"[^A-Za-z0-9_.\-]+")

T = TypeVar("T")


# --- tracking store -------------------------------------------------------------------------------


def sqlite_db_path(uri: str) -> Path | None:
    """The database file of a local ``sqlite:///path`` URI (relative to the cwd unless absolute); None otherwise."""
    prefix = "sqlite:///"
    if not uri.lower().startswith(prefix):
        return None
    path = uri[len(prefix) :].split("?", 1)[0]
    if not path or path == ":memory:":
        return None
    return Path(path)


def choose_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use: explicit > $MLFLOW_TRACKING_URI > DEFAULT_TRACKING_URI (nothing created)."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def resolve_tracking_uri(uri: str | None = None) -> str:
    """The tracking URI to use (``choose_tracking_uri``); creates a sqlite db's folder."""
    chosen = choose_tracking_uri(uri)
    db = sqlite_db_path(chosen)
    if db is not None:
        db.parent.mkdir(parents=True, exist_ok=True)
    return chosen


def _dir_name(name: str) -> str:
    """A file-system-safe folder name for an experiment name."""
    return _BAD_DIR_CHARS.sub("_", name).strip("._") or "experiment"


def default_artifact_location(uri: str, experiment_name: str) -> str | None:
    """``file://<db dir>/artifacts/<experiment>`` for a local sqlite store; None elsewhere (the server decides)."""
    db = sqlite_db_path(uri)
    if db is None:
        return None
    return (db.parent.resolve() / "artifacts" / _dir_name(experiment_name)).as_uri()


def check_tracking_reachable(uri: str, timeout: float = 3.0) -> None:
    """Raise ConfigError if an http(s) tracking server does not answer ``<uri>/health``; no-op for local stores."""
    if urlparse(uri).scheme.lower() not in ("http", "https"):
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
        raise ConfigError(
            f"MLflow tracking server {uri} is not reachable ({reason})", key="tracking.uri", hint=SERVER_HINT
        ) from exc


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


# --- keys and values ------------------------------------------------------------------------------


def _key_part(part: str) -> str:
    """One ``/``-separated part of a key: accents dropped (``café`` -> ``cafe``); where other characters had to go, a
    short stable hash of the original is appended, so names in non-Latin scripts stay distinct (``Задача`` -> ``______-b9ce27``)."""
    latin = "".join(c for c in unicodedata.normalize("NFKD", part) if not unicodedata.combining(c))
    if latin.isascii() and not _BAD_KEY_CHARS.search(latin):
        return latin
    cleaned = _BAD_KEY_CHARS.sub("_", "".join(c if c.isascii() else "_" for c in latin))
    return f"{cleaned}-{hashlib.sha256(part.encode()).hexdigest()[:6]}"


def metric_key(name: str) -> str:
    """An MLflow-valid metric/param key: other characters become ``_`` plus a short hash; ``.``/``..``/empty parts dropped."""
    cleaned = "/".join(_key_part(p) for p in str(name).split("/"))
    parts = [p if p != ".." else "__" for p in cleaned.split("/") if p not in ("", ".")]
    key = "/".join(parts)[:MAX_ENTITY_KEY_LENGTH].rstrip("/")
    if not key:
        raise ValueError(f"metric name {name!r} has no usable characters")
    return key


def plain(obj: Any) -> Any:
    """``obj`` as plain YAML/JSON data: dicts, lists, str, int, float, bool, None."""
    if is_dataclass(obj) and not isinstance(obj, type):
        return plain(asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [plain(v) for v in obj]
    if obj is None or isinstance(obj, (str, bool, int, float)):
        return obj
    if hasattr(obj, "item"):  # numpy / torch scalars
        return plain(obj.item())
    return str(obj)


def _truncate(text: str, limit: int) -> str:
    """``text`` cut to ``limit`` characters, marked with ``...`` when cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def param_value(value: Any) -> str:
    """A config value as an MLflow param: strings as-is, anything else as JSON text, truncated to MLflow's limit."""
    text = value if isinstance(value, str) else json.dumps(plain(value), ensure_ascii=False)
    return _truncate(text, MAX_PARAM_VAL_LENGTH)


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """The config flattened to dotted keys (``training.lr``); lists and empty dicts stay whole as JSON text."""
    out: dict[str, str] = {}
    for key, value in plain(config).items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten_params(value, dotted + "."))
        else:
            out[metric_key(dotted)] = param_value(value)
    return out


def _chunks(items: Sequence[T], size: int) -> Iterator[Sequence[T]]:
    """Consecutive slices of ``items`` of at most ``size`` elements."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _now_ms() -> int:
    """The current time in milliseconds since the epoch, as MLflow stores it."""
    return int(time.time() * 1000)


# --- runs -----------------------------------------------------------------------------------------


class RunLogger:
    """One MLflow run, logged through an explicit client; usable as a context manager that ends the run."""

    def __init__(
        self,
        client: MlflowClient,
        experiment_id: str,
        run_name: str,
        tags: Mapping[str, Any] | None = None,
        parent_run_id: str | None = None,
    ) -> None:
        """Create the run (as a child of ``parent_run_id`` when given)."""
        all_tags = {k: _truncate(str(v), MAX_TAG_VAL_LENGTH) for k, v in (tags or {}).items()}
        if parent_run_id:
            all_tags[PARENT_RUN_TAG] = parent_run_id
        self._client = client
        self._run_id: str = client.create_run(experiment_id, run_name=run_name, tags=all_tags).info.run_id
        self._ended = False

    @classmethod
    def reopen(cls, client: MlflowClient, run_id: str) -> "RunLogger":
        """Continue logging into an existing run (a resumed one), marking it RUNNING again."""
        logger = cls.__new__(cls)
        logger._client = client
        logger._run_id = run_id
        logger._ended = False
        client.update_run(run_id, status="RUNNING")
        return logger

    def logged_steps(self, key: str) -> set[int]:
        """The steps at which metric ``key`` is already recorded."""
        return {m.step for m in self._client.get_metric_history(self._run_id, key)}

    @property
    def run_id(self) -> str:
        """The MLflow run id."""
        return self._run_id

    @property
    def client(self) -> MlflowClient:
        """The client the run is logged through."""
        return self._client

    def log_config(self, resolved: Mapping[str, Any]) -> None:
        """Log the resolved config as dotted-key params (batches of 100) and as a ``config.yaml`` artifact."""
        params = [Param(k, v) for k, v in flatten_params(resolved).items()]
        for chunk in _chunks(params, MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self._run_id, params=chunk)
        text = yaml.safe_dump(plain(resolved), sort_keys=False, allow_unicode=True)
        self._client.log_text(self._run_id, text, "config.yaml")

    def _log_metrics(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log ``metrics`` at ``step`` in one ``log_batch`` call (more only past MLflow's 1000-per-batch cap)."""
        timestamp = _now_ms()
        batch: dict[str, Metric] = {}
        for name, value in metrics.items():
            key = metric_key(name)
            if key in batch:
                raise ValueError(f"metric names {name!r} and another both map to MLflow key {key!r}")
            batch[key] = Metric(key, float(value), timestamp, int(step))
        for chunk in _chunks(list(batch.values()), MAX_METRICS_PER_BATCH):
            self._client.log_batch(self._run_id, metrics=chunk)

    def log_step(self, step: int, metrics: Mapping[str, float]) -> None:
        """Log the metrics of one step (e.g. after training on task ``step``) in a single call."""
        self._log_metrics(step, metrics)

    def log_final(self, metrics: Mapping[str, float], step: int = 0) -> None:
        """Log end-of-run summary metrics (use names distinct from the per-step ones)."""
        self._log_metrics(step, metrics)

    def log_dict(self, obj: Any, artifact_file: str) -> None:
        """Write ``obj`` as a JSON (``.json``) or YAML (``.yaml``/``.yml``) artifact."""
        self._client.log_dict(self._run_id, plain(obj), artifact_file)

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload a local file (at the artifact root, or under ``artifact_path``)."""
        local = Path(path)
        if not local.is_file():
            raise FileNotFoundError(f"artifact file not found: {local}")
        self._client.log_artifact(self._run_id, str(local), artifact_path)

    def log_figure_file(self, path: str | Path, artifact_path: str | None = None) -> None:
        """Upload an already-written figure (PNG, SVG, ...) as an artifact."""
        self.log_artifact(path, artifact_path)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (values as strings, truncated to MLflow's limit), in batches of 100."""
        items = [RunTag(k, _truncate(str(v), MAX_TAG_VAL_LENGTH)) for k, v in tags.items()]
        for chunk in _chunks(items, MAX_PARAMS_TAGS_PER_BATCH):
            self._client.log_batch(self._run_id, tags=chunk)

    def end(self, status: str = "FINISHED") -> None:
        """Mark the run terminated with status FINISHED, FAILED or KILLED."""
        if status not in END_STATUSES:
            raise ValueError(f"status must be one of {', '.join(END_STATUSES)}, got {status!r}")
        self._client.set_terminated(self._run_id, status)
        self._ended = True

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """End the run unless already ended: FINISHED, KILLED on Ctrl-C, FAILED on any other exception."""
        if self._ended:
            return
        if exc_type is None:
            self.end("FINISHED")
        elif issubclass(exc_type, KeyboardInterrupt):
            self.end("KILLED")
        else:
            self.end("FAILED")


# --- provenance tags ------------------------------------------------------------------------------


def package_version(name: str) -> str:
    """The installed version of distribution ``name``, or ``not installed``."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def _git(args: Sequence[str], cwd: Path) -> str | None:
    """Stdout of ``git <args>`` in ``cwd``, or None when git or the checkout is missing."""
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_tags(directory: Path) -> dict[str, str]:
    """``git_commit`` and ``git_dirty`` (tracked files changed) for ``directory``; ``unknown`` outside a checkout."""
    commit = _git(["rev-parse", "HEAD"], directory)
    if not commit:
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    status = _git(["status", "--porcelain", "--untracked-files=no"], directory)
    dirty = "unknown" if status is None else str(bool(status)).lower()
    return {"git_commit": commit, "git_dirty": dirty, "mlflow.source.git.commit": commit}


def default_tags(project_dir: Path | None = None) -> dict[str, str]:
    """Provenance tags: ``versions.<pkg>`` for the main packages plus the git commit of ``project_dir``."""
    tags = {f"versions.{name}": package_version(name) for name in TRACKED_PACKAGES}
    tags.update(git_tags(project_dir if project_dir is not None else Path(__file__).resolve().parents[2]))
    return tags
