"""`cl-harness ui` in a real browser after a tiny 3-strategy grid, and its shutdown: nothing serves the port after SIGTERM.

The browser test drives Debian's headless Chromium through Playwright's Python API (Playwright's own browser
downloads are not used); it skips, with the reason, when either is missing. `.ci/run` installs both.
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import write_demo_stream, write_experiment

from cl_harness.tracking.links import (
    artifact_url,
    experiment_url,
    local_ui_url,
    run_url,
)

STRATEGIES = ["naive", {"replay": {"mem_size": 8}}, "lwf"]
UI_START_TIMEOUT_S = 180.0


def chromium_path() -> str | None:
    """Debian's chromium binary, if installed."""
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def browser_missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if chromium_path() is None:
        return "no Chromium browser installed (Debian: apt-get install chromium)"
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def serving(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def live_group_members(pgid: int) -> list[int]:
    """Processes of process group ``pgid`` that are still alive (zombies left out)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # state, ppid, pgrp, ...
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def children_of(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rindex(")") + 2 :].split()[1]) == pid:
                out.append(int(entry.name))
    return out


class UIProcess:
    """`python -m cl_harness ui` in a subprocess, its output read line by line."""

    def __init__(self, uri: str, port: int) -> None:
        self.port = port
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        command = [sys.executable, "-m", "cl_harness", "ui", "--tracking-uri", uri, "--port", str(port)]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)

    def wait_for(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                if self.process.poll() is not None and self.lines.empty():
                    break
                continue
            self.output.append(line)
            if text in line:
                return line
        pytest.fail(f"`cl-harness ui` did not print {text!r} within {timeout:.0f}s:\n{''.join(self.output)}")

    def rest(self) -> str:
        while not self.lines.empty():
            self.output.append(self.lines.get())
        return "".join(self.output)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        for pid in children_of(self.process.pid):  # never leave a server behind, even when the test failed
            try:
                os.killpg(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


@pytest.fixture(scope="module")
def grid(tmp_path_factory, tiny_bert):
    """A tiny 3-strategy grid run through `cl-harness run` into a fresh sqlite store."""
    from mlflow import MlflowClient

    from cl_harness.cli import main

    folder = tmp_path_factory.mktemp("ui-grid")
    write_demo_stream(folder, "class_incremental", per_class=8, tasks=2)
    experiment = write_experiment(folder, tiny_bert, STRATEGIES)
    uri = f"sqlite:///{folder}/store/mlflow.db"
    assert main(["run", str(experiment), "--tracking-uri", uri, "--no-progress"]) == 0
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("tiny")
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags["cl_harness.role"] == "parent")
    children = {r.info.run_name: r.info.run_id for r in runs if r.data.tags["cl_harness.role"] == "child"}
    return {"uri": uri, "experiment_id": exp.experiment_id, "parent": parent.info.run_id, "children": children, "folder": folder}


@pytest.fixture(scope="module")
def ui(grid):
    """`cl-harness ui` on the grid's store, on a free loopback port, once it says it is ready."""
    process = UIProcess(grid["uri"], free_port())
    started = time.monotonic()
    try:
        line = process.wait_for("MLflow UI ready:", UI_START_TIMEOUT_S)
        process.ready_after_s = time.monotonic() - started
        process.ready_line = line
        yield process
    finally:
        process.stop()


def test_the_url_is_printed_only_once_the_server_answers(ui):
    assert serving(ui.port)  # it answered before the line was printed
    assert f"{local_ui_url(port=ui.port)}/#/experiments?workflowType=machine_learning" in ui.ready_line


def test_the_browser_shows_parent_children_description_and_heatmap(ui, grid, tmp_path):
    reason = browser_missing()
    if reason:
        pytest.skip(reason)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=60_000)  # a loaded CI machine renders slowly

    base = local_ui_url(port=ui.port)
    shots = Path(os.environ.get("CL_HARNESS_SCREENSHOTS") or tmp_path)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 1000})
            page.set_default_timeout(60_000)

            # the experiment page (the shared view `cl-harness run` prints): the parent, and its children once expanded
            page.goto(experiment_url(base, grid["experiment_id"], f"cl-harness-{grid['parent']}"))
            name_cells = page.locator('.ag-row [col-id="attributes.`Run Name`"]')
            expect(name_cells.filter(has_text="tiny")).to_have_count(1)
            expect(page.locator('.ag-header-cell[col-id="metrics.`acc`"]')).to_be_visible()
            name_cells.filter(has_text="tiny").locator("button").first.click()
            for child in grid["children"]:
                expect(name_cells.filter(has_text=child)).to_have_count(1)  # full names, not cut
            page.screenshot(path=str(shots / "experiment_page.png"))

            # the parent run: its description is the comparison table
            page.goto(run_url(base, grid["experiment_id"], grid["parent"]))
            table = page.locator("table", has_text="acc (%)")
            expect(table.first).to_be_visible()
            for strategy in ("naive", "replay", "lwf"):
                expect(table.first).to_contain_text(strategy)
            page.screenshot(path=str(shots / "parent_run.png"))

            # a child run: the heatmap artifact renders as an image
            child_id = grid["children"]["replay/seed0/order0"]
            page.goto(artifact_url(base, grid["experiment_id"], child_id, "accuracy_matrix.png"))
            image = page.locator("img[src^='blob:']").first
            expect(image).to_be_visible()
            page.wait_for_function("img => img.complete && img.naturalWidth > 100", arg=image.element_handle())
            page.screenshot(path=str(shots / "child_run.png"))
        finally:
            browser.close()


def test_sigterm_stops_every_server_process_and_frees_the_port(ui):
    """Runs last: it stops the module's UI."""
    servers = children_of(ui.process.pid)
    assert servers and serving(ui.port)
    ui.process.send_signal(signal.SIGTERM)
    assert ui.process.wait(timeout=60) == 0
    output = ui.rest()
    assert f"stopped the MLflow UI on port {ui.port}" in output and "interrupted" not in output and "checkpoint" not in output
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (serving(ui.port) or any(live_group_members(pid) for pid in servers)):
        time.sleep(0.2)
    assert not serving(ui.port)
    assert not any(live_group_members(pid) for pid in servers)  # workers and job runner included
