"""Local executors: one run after another in this process, or N spawned worker processes on this machine."""

from __future__ import annotations

import multiprocessing
import signal
from collections import deque
from multiprocessing.connection import Connection, wait

from cl_harness.errors import TrackingStoreError
from cl_harness.grid.experiment import GridContext, OnResult, RunSpec, run_sequentially
from cl_harness.runner.run import RunResult


class SequentialExecutor:
    """``--executor local``: the runs one after another in this process (the default)."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = threads

    def run(self, context: GridContext, on_result: OnResult | None) -> list[RunResult]:
        """Train every planned run here, in order (with ``threads`` torch threads when given)."""
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        return run_sequentially(context, on_result)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def worker_main(spec: RunSpec, conn: Connection) -> None:
    """A worker process: run each index received, answer ``("ok", result)``, ``("error", text)``, ``("store", text)`` or ``("interrupted", None)``.

    The experiment is loaded and tokenised once, for the first run, and serves every later run of this worker.
    """
    from cl_harness.grid.worker import prepare_in_worker, run_planned
    from cl_harness.errors import error_line
    from cl_harness.strategies.user_plugins import process_exit
    from cl_harness.tracking.store import is_store_failure

    signal.signal(signal.SIGTERM, _interrupt)  # terminate() ends the run KILLED, its checkpoint kept
    prepared = None
    while True:
        try:
            index = conn.recv()
        except EOFError:
            return
        if index is None:
            return
        try:
            prepared = prepared or prepare_in_worker(spec)
            outcome = ("ok", run_planned(spec, index, prepared))
        except KeyboardInterrupt:
            conn.send(("interrupted", None))
            return
        except BaseException as exc:  # noqa: BLE001 - an ordinary error (or user code's sys.exit) fails this run only, not retried
            text = error_line(exc) if isinstance(exc, Exception) else f"ended by {process_exit(exc)}"
            outcome = ("store" if is_store_failure(exc) else "error", text)
        conn.send(outcome)


class ProcessExecutor:
    """``--executor local --workers N``: N spawned worker processes; a run whose process dies starts again in a new one."""

    def __init__(self, workers: int, max_retries: int, threads: int) -> None:
        self.workers = workers
        self.max_retries = max_retries
        self.threads = threads

    def run(self, context: GridContext, on_result: OnResult | None) -> list[RunResult]:
        """Run the grid on the worker processes; results in planned order."""
        spawn = multiprocessing.get_context("spawn")  # torch is not fork-safe
        spec = context.spec(self.threads)
        pending = deque(context.dispatch_order())
        deaths = [0] * len(context.runs)
        results: dict[int, RunResult] = {}
        idle: list[tuple[Connection, multiprocessing.Process]] = []
        busy: dict[Connection, tuple[multiprocessing.Process, int]] = {}
        try:
            while pending or busy:
                while pending and len(idle) + len(busy) < self.workers:
                    conn, child = spawn.Pipe()
                    process = spawn.Process(target=worker_main, args=(spec, child), name="cl-harness-worker")
                    process.start()
                    child.close()  # our end sees EOF once the worker is gone
                    idle.append((conn, process))
                while pending and idle:
                    conn, process = idle.pop()
                    index = pending.popleft()
                    conn.send(index)
                    busy[conn] = (process, index)
                for conn in wait(list(busy)):
                    process, index = busy.pop(conn)
                    try:
                        kind, payload = conn.recv()
                    except EOFError:
                        kind, payload = "died", None
                        conn.close()
                        process.join()
                    else:
                        idle.append((conn, process))
                    planned = context.runs[index]
                    if kind == "died":
                        deaths[index] += 1
                        if deaths[index] <= self.max_retries:
                            pending.append(index)  # a new worker resumes it from its last checkpoint
                            continue
                        reason = f"the worker process died on all {deaths[index]} attempts (exit code {process.exitcode})"
                        payload = context.lost(planned, reason)
                    elif kind == "error":
                        payload = context.lost(planned, payload)
                    elif kind == "store":  # the store fails every run alike: stop the grid, as in one process
                        raise TrackingStoreError(f"in the worker of {planned.name}: {payload}")
                    elif kind == "interrupted":
                        raise KeyboardInterrupt(f"worker of {planned.name} interrupted")
                    results[index] = payload
                    if on_result is not None:
                        on_result(payload)
        finally:
            for conn, _process in idle:
                try:
                    conn.send(None)
                except OSError:  # it is gone already
                    pass
            for _conn, (process, _) in busy.items():
                process.terminate()
            for conn, process in [*idle, *((c, p) for c, (p, _) in busy.items())]:
                process.join(timeout=30)
                conn.close()
        return [results[i] for i in range(len(context.runs))]
