"""Addresses of MLflow UI pages (experiment, run, run artifact) for a tracking store, as deep links."""

from __future__ import annotations

import os
from urllib.parse import quote, urlparse, urlunparse

DEFAULT_UI_HOST = "127.0.0.1"
DEFAULT_UI_PORT = 5000
UI_URL_ENV = "CL_HARNESS_UI_URL"  # where the UI of a local store is served, when not `cl-harness ui`'s default
#: MLflow 3 opens an experiment in its GenAI view unless the URL asks for the machine-learning one.
WORKFLOW_QUERY = "workflowType=machine_learning"


def local_ui_url(host: str = DEFAULT_UI_HOST, port: int = DEFAULT_UI_PORT) -> str:
    """The address `cl-harness ui --host HOST --port PORT` serves."""
    return f"http://{host}:{port}"


def store_serves_ui(tracking_uri: str) -> bool:
    """Whether the tracking store is an MLflow server, which serves the UI itself."""
    return urlparse(tracking_uri).scheme.lower() in ("http", "https")


def ui_base_url(tracking_uri: str) -> str:
    """The UI address for a store: the server itself (credentials dropped), else $CL_HARNESS_UI_URL or `cl-harness ui`'s."""
    if store_serves_ui(tracking_uri):
        parts = urlparse(tracking_uri)
        netloc = parts.netloc.rsplit("@", 1)[-1]
        return urlunparse(parts._replace(netloc=netloc, query="", fragment="")).rstrip("/")
    return (os.environ.get(UI_URL_ENV) or local_ui_url()).rstrip("/")


def experiment_path(experiment_id: str, share_key: str | None = None) -> str:
    """The UI route of an experiment's runs table (``#/...``), optionally with a shared view (columns)."""
    query = WORKFLOW_QUERY + (f"&viewStateShareKey={quote(share_key, safe='')}" if share_key else "")
    return f"#/experiments/{quote(str(experiment_id), safe='')}/runs?{query}"  # the runs tab keeps the share key


def run_path(experiment_id: str, run_id: str) -> str:
    """The UI route of one run's page."""
    return f"#/experiments/{quote(str(experiment_id), safe='')}/runs/{quote(run_id, safe='')}?{WORKFLOW_QUERY}"


def artifact_path(experiment_id: str, run_id: str, artifact: str) -> str:
    """The UI route of one artifact of a run, opened in the run's artifact tab."""
    base = f"#/experiments/{quote(str(experiment_id), safe='')}/runs/{quote(run_id, safe='')}"
    return f"{base}/artifacts/{quote(artifact)}?{WORKFLOW_QUERY}"


def experiment_url(base: str, experiment_id: str, share_key: str | None = None) -> str:
    return f"{base.rstrip('/')}/{experiment_path(experiment_id, share_key)}"


def run_url(base: str, experiment_id: str, run_id: str) -> str:
    return f"{base.rstrip('/')}/{run_path(experiment_id, run_id)}"


def artifact_url(base: str, experiment_id: str, run_id: str, artifact: str) -> str:
    return f"{base.rstrip('/')}/{artifact_path(experiment_id, run_id, artifact)}"
