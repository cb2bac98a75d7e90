"""Processes that open one fresh tracking store at the same moment all succeed: two and three real processes, on the same
and on different experiments, many times over, while another process keeps the CPUs busy.

MLflow creates a store's tables when a client first connects; two processes doing it at once fail in alembic's
migrations. ``open_store`` creates a store under its creation lock, so the first creates it and the others find it.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

REPETITIONS = 20
SLOTS = (("pair", "a"), ("pair", None), ("trio", "a"), ("trio", "a"), ("trio", "b"))  # None: "a" or "b", by repetition
TIMEOUT_S = 600


def open_fresh_stores(root: str, slot: int, barrier, results) -> None:
    """In each repetition, wait for every racer, then open this slot's fresh store and create its experiment there."""
    from cl_harness.tracking.store import experiment_for, open_store

    store, experiment = SLOTS[slot]
    for repetition in range(REPETITIONS):
        name = experiment or ("a" if repetition % 2 else "b")  # the pair: different experiments, then the same one
        barrier.wait(timeout=TIMEOUT_S)
        try:
            uri, client = open_store(f"sqlite:///{root}/{repetition}/{store}/mlflow.db")
            results.put((repetition, store, name, experiment_for(client, uri, name), None))
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            results.put((repetition, store, name, None, f"{type(exc).__name__}: {str(exc)[:300]}"))


@pytest.fixture
def store_root(tmp_path):
    """A folder for the stores, in memory where the machine has one (/dev/shm): creating a store syncs to disk ~70 times."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    folder = Path(tempfile.mkdtemp(prefix="cl-harness-store-race-", dir=shm))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def keep_busy(stop) -> None:
    """Load: spin until told to stop."""
    while not stop.is_set():
        sum(range(10_000))


@pytest.mark.slow
def test_processes_opening_one_fresh_store_at_once_all_succeed(store_root):
    context = multiprocessing.get_context("spawn")
    barrier, results, stop = context.Barrier(len(SLOTS)), context.Queue(), context.Event()
    load = context.Process(target=keep_busy, args=(stop,))
    racers = [context.Process(target=open_fresh_stores, args=(str(store_root), slot, barrier, results)) for slot in range(len(SLOTS))]
    load.start()
    for racer in racers:
        racer.start()
    outcomes = []
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while len(outcomes) < REPETITIONS * len(SLOTS) and time.monotonic() < deadline:
            outcomes.append(results.get(timeout=TIMEOUT_S))
    finally:
        stop.set()
        for process in [*racers, load]:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
    failures = [outcome for outcome in outcomes if outcome[4] is not None]
    assert not failures, f"{len(failures)} of {len(outcomes)} failed, e.g. {failures[:3]}"
    assert len(outcomes) == REPETITIONS * len(SLOTS)
    ids: dict[tuple, set] = {}
    for repetition, store, name, experiment_id, _ in outcomes:
        ids.setdefault((repetition, store, name), set()).add(experiment_id)
    assert all(len(found) == 1 for found in ids.values()), ids  # one experiment per name, found by every process
    assert all(len({key[2] for key in ids if key[:2] == (repetition, "trio")}) == 2 for repetition in range(REPETITIONS))
