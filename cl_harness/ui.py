"""`cl-harness ui`: serve the MLflow UI on a tracking store, say where once it answers, and stop all of it on exit.

The one module outside ``tracking/`` that launches mlflow. The server runs in its own process group
(its uvicorn workers and job runner included), so that Ctrl-C or SIGTERM stops every process of it.
"""

from __future__ import annotations

import errno
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cl_harness.tracking.links import (
    DEFAULT_UI_HOST,
    DEFAULT_UI_PORT,
    WORKFLOW_QUERY,
    local_ui_url,
    store_serves_ui,
    ui_base_url,
)

DEFAULT_WORKERS = 1
DEFAULT_START_TIMEOUT_S = 120.0
STOP_GRACE_S = 10.0
# plain HTTP without proxies: the server listens on this machine
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class UIError(Exception):
    """The UI could not be started (busy port, server exited, no answer in time); the message says what to do."""

    def __init__(self, message: str, busy_port: bool = False) -> None:
        super().__init__(message)
        self.busy_port = busy_port


@dataclass(frozen=True)
class UIOptions:
    tracking_uri: str
    host: str = DEFAULT_UI_HOST
    port: int = DEFAULT_UI_PORT
    workers: int = DEFAULT_WORKERS
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on ``host:port`` (or the port cannot be bound there)."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        pass
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno in (errno.EADDRINUSE, errno.EACCES)
    return False


def server_command(options: UIOptions) -> list[str]:
    """The ``mlflow server`` command line for the store (artifacts served through it)."""
    return [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", options.tracking_uri,
        "--host", options.host, "--port", str(options.port), "--workers", str(options.workers),
    ]


def server_env() -> dict[str, str]:
    """The server's environment: no telemetry and no job runner (not needed to browse runs), unless the user set them."""
    env = dict(os.environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    env.setdefault("DO_NOT_TRACK", "true")
    return env


def answers(url: str, timeout: float = 2.0) -> bool:
    """Whether ``<url>/health`` answers 200."""
    try:
        with _HTTP.open(f"{url}/health", timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _log_tail(log: Path, chars: int = 2000) -> str:
    try:
        return log.read_text(errors="replace")[-chars:].strip()
    except OSError:
        return ""


def stop_group(process: subprocess.Popen, grace_s: float = STOP_GRACE_S) -> None:
    """SIGTERM the server's whole process group, SIGKILL it if anything lingers after ``grace_s``."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:  # workers may outlive the leader for a moment
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    process.wait(timeout=grace_s)


def start(options: UIOptions, log: Path) -> subprocess.Popen:
    """Start the server in its own process group and wait until it answers; UIError (server stopped) otherwise."""
    if port_in_use(options.host, options.port):
        raise UIError(
            f"port {options.port} on {options.host} is already in use (another `cl-harness ui` or mlflow server?). "
            f"If it is your MLflow UI, open {local_ui_url(options.host, options.port)}; otherwise stop it, "
            f"or pick a free port: cl-harness ui --port {options.port + 1}",
            busy_port=True,
        )
    url = local_ui_url(options.host, options.port)
    with log.open("wb") as out:
        process = subprocess.Popen(server_command(options), stdout=out, stderr=subprocess.STDOUT, env=server_env(),
                                   start_new_session=True)
    try:
        deadline = time.monotonic() + options.start_timeout_s
        while not answers(url):
            if process.poll() is not None:
                raise UIError(f"the MLflow server exited with code {process.returncode} before answering:\n{_log_tail(log)}")
            if time.monotonic() > deadline:
                raise UIError(f"the MLflow server did not answer on {url} within {options.start_timeout_s:.0f} s "
                              f"(log: {log}):\n{_log_tail(log)}")
            time.sleep(0.25)
    except BaseException:
        stop_group(process)
        raise
    return process


def serve(options: UIOptions, say: Callable[[str], None] = print) -> int:
    """Run the UI until Ctrl-C or SIGTERM (both arrive as KeyboardInterrupt) or until the server exits; its exit code."""
    if store_serves_ui(options.tracking_uri):  # an MLflow server: it serves its own UI
        say(f"the tracking store is an MLflow server with its own UI: open {ui_base_url(options.tracking_uri)}"
            f"/#/experiments?{WORKFLOW_QUERY}")
        return 0
    with tempfile.TemporaryDirectory(prefix="cl-harness-ui-") as tmp:
        log = Path(tmp) / "mlflow-server.log"
        say(f"starting the MLflow UI for {options.tracking_uri} on {options.host}:{options.port} ...")
        process = start(options, log)
        url = local_ui_url(options.host, options.port)
        say(f"MLflow UI ready: {url}/#/experiments?{WORKFLOW_QUERY}\n(Ctrl-C stops it)")
        try:
            code = process.wait()
        except KeyboardInterrupt:
            stop_group(process)
            say(f"stopped the MLflow UI on port {options.port}")
            return 0
        stop_group(process)  # its leader exited: leave no worker behind
        if code:
            say(f"the MLflow server exited with code {code}:\n{_log_tail(log)}")
        return code
