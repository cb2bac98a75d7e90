"""A live ``mlflow server`` on loopback for tests: start, health check, stop, and plain REST calls."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

STARTUP_TIMEOUT_S = 60.0
# plain HTTP without proxies: the server listens on 127.0.0.1 only
HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def server_command(root: Path, port: int) -> list[str]:
    """``mlflow server`` on sqlite, with artifacts proxied over HTTP (``mlflow-artifacts:/``) into ``root``."""
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", f"sqlite:///{root}/db.sqlite",
        "--default-artifact-root", "mlflow-artifacts:/",
        "--artifacts-destination", str(root / "artifacts"),
        "--serve-artifacts",
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]


def wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout: float) -> None:
    """Poll ``<url>/health`` until it answers 200; fail with the server log if it dies or takes too long."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"mlflow server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with HTTP.open(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    pytest.fail(f"mlflow server not healthy after {timeout:.0f}s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    """Terminate the server's process group (it was started in its own session), killing it if it lingers."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    except ProcessLookupError:
        pass


def start_server(root: Path, port: int) -> subprocess.Popen:
    """An ``mlflow server`` on ``root``'s store and ``port``, healthy, in its own session."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
           "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner subprocess: starts in ~10 s, not ~20 s
    log = root / f"server-{time.monotonic_ns()}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(server_command(root, port), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=root, start_new_session=True)
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process, log, STARTUP_TIMEOUT_S)
    except BaseException:
        stop(process)
        raise
    return process


def serve(root: Path):
    """Generator for a fixture: yield the URL of a fresh server on ``root``, always terminated after."""
    port = free_port()
    process = start_server(root, port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


# --- plain REST calls -----------------------------------------------------------------------------


def get(url: str, path: str, **params) -> dict:
    """GET ``path`` with query ``params`` and return the JSON answer."""
    with HTTP.open(f"{url}{path}?{urllib.parse.urlencode(params)}", timeout=30) as response:
        return json.loads(response.read())


def post(url: str, path: str, body: dict) -> dict:
    """POST a JSON ``body`` to ``path`` and return the JSON answer."""
    request = urllib.request.Request(f"{url}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with HTTP.open(request, timeout=30) as response:
        return json.loads(response.read())


def tags_of(run: dict) -> dict[str, str]:
    """A REST run's tags as a dict."""
    return {t["key"]: t["value"] for t in run.get("data", {}).get("tags", [])}


def search_runs(url: str, experiment_id: str, filter_string: str = "") -> list[dict]:
    """Every run of the experiment matching ``filter_string`` (all pages)."""
    runs, token = [], None
    while True:
        body = {"experiment_ids": [experiment_id], "filter": filter_string, "max_results": 100}
        if token:
            body["page_token"] = token
        answer = post(url, "/api/2.0/mlflow/runs/search", body)
        runs += answer.get("runs", [])
        token = answer.get("next_page_token")
        if not token:
            return runs


def artifact_paths(url: str, run_id: str) -> set[str]:
    """The paths of the run's top-level artifacts."""
    return {f["path"] for f in get(url, "/api/2.0/mlflow/artifacts/list", run_id=run_id).get("files", [])}
