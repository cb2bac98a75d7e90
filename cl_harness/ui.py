"""The ``ui`` command: the MLflow UI, started as its own process on the tracking store (127.0.0.1)."""

from __future__ import annotations

import subprocess
import sys

from cl_harness.tracking.store import resolve_tracking_uri

UI_VIEW = "#/experiments?workflowType=machine_learning"  # the view that shows the runs table


def serve_ui(tracking_uri: str | None, port: int) -> int:
    """Run ``mlflow ui`` on the store until it exits; returns its exit code."""
    uri = resolve_tracking_uri(tracking_uri)
    url = f"http://127.0.0.1:{port}/{UI_VIEW}"
    print(f"MLflow UI for {uri}\nopen {url}  (the ?workflowType=machine_learning view shows the runs table)", flush=True)
    command = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", str(port)]
    return subprocess.call(command)
