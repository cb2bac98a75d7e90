"""File locks between processes that run the same grid: one lock per run folder, one for the grid's parent run.

Two ``cl-harness run`` invocations of one experiment share its run folders. The run lock makes
the second one leave a run to the process training it (it does the other runs first, then waits,
and finds that run finished); the grid lock lets one of them at a time create or write the parent run.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

from cl_harness.errors import ConfigError

RUN_LOCK_FILE = ".run.lock"


class RunBusy(Exception):
    """The run's folder is locked by another process (raised only when not waiting)."""


def _lock(path: Path):
    from filelock import FileLock

    return FileLock(str(path), thread_local=False)


def ensure_folder(folder: Path) -> None:
    """Create ``folder``; a failure is the config's ``checkpoint_dir`` that cannot hold run folders (exit 2)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create the run folder {folder}: {exc.strerror or type(exc).__name__}", key="checkpoint_dir",
            hint="choose a checkpoint_dir you can write to",
        ) from None


@contextmanager
def grid_lock(grid: Path):
    """Hold ``<grid>.lock`` (beside the grid folder) while the grid's parent run is found, created or written."""
    ensure_folder(grid.parent)
    lock = _lock(grid.parent / f"{grid.name}.lock")
    with lock:
        yield


@contextmanager
def run_lock(folder: Path, name: str, wait: bool = True):
    """Hold the run folder's lock; another process's run is waited for (``wait``) or reported with RunBusy."""
    from filelock import Timeout

    ensure_folder(folder)
    lock = _lock(folder / RUN_LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if not wait:
            raise RunBusy(name) from None
        print(f"{name}: another process is training this run ({folder}); waiting for it", file=sys.stderr, flush=True)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()
