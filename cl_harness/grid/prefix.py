"""Shared prefixes in a grid: each prefix unit trained once into its folder (or reused from it), then forked by its runs.

A prefix unit (``grid/plan.py``) is task 1 of one seed and order, trained by naive, for the runs whose strategies
train task 1 exactly as naive does. The first of its runs to start trains it under the unit folder's lock; the
others, in this process or another, wait for that lock and fork the saved state (``runner/prefix.py``). A killed
grid finds the prefix in ``<grid>/prefixes/`` and reuses it when its checkpoint verifies.
"""

from __future__ import annotations

from pathlib import Path

from cl_harness.config.names import file_name
from cl_harness.errors import ConfigError
from cl_harness.grid.locks import run_lock
from cl_harness.grid.plan import PREFIX_LABEL, PlannedRun, PrefixUnit, prefix_units
from cl_harness.grid.prepare import PreparedExperiment
from cl_harness.runner.checkpoint import CHECKPOINT_FILE, load_intact, load_state, remove_checkpoints, verify
from cl_harness.runner.prefix import SharedPrefix
from cl_harness.runner.run import RunResult, train_and_evaluate
from cl_harness.strategies.registry import StrategySpec
from cl_harness.tracking.schema import FINISHED, TRAIN_TIME_METRIC, TRAIN_TIME_SAVED_METRIC

PREFIXES_FOLDER = "prefixes"


def prefix_folder(grid: Path, unit: PrefixUnit) -> Path:
    return grid / PREFIXES_FOLDER / file_name(unit.name.replace("/", "-"))


def _finished(folder: Path) -> bool:
    """True when ``folder``'s state says its prefix finished and its checkpoint file is there."""
    try:
        state = load_state(folder)
    except ConfigError:  # a damaged state file: the prefix is trained again
        return False
    return state is not None and state.status == FINISHED and (folder / CHECKPOINT_FILE).is_file()


def prefix_ready(folder: Path, hashed: bool = True) -> bool:
    """True when ``folder`` holds a finished prefix whose checkpoint matches its recorded size and sha256.

    ``hashed=False`` skips reading the checkpoint back (it was just written, and hashed from memory).
    """
    return _finished(folder) and (not hashed or verify(folder / CHECKPOINT_FILE) is None)


def ensure_prefix(prepared: PreparedExperiment, unit: PrefixUnit, grid: Path, show_progress: bool) -> SharedPrefix | None:
    """The unit's prefix for a run to fork: reused from its folder, else trained here first; None if its training failed.

    A reused prefix comes with its checkpoint, read and checked once here (the fork does not read it again).
    """
    folder = prefix_folder(grid, unit)
    with run_lock(folder, unit.name):  # runs of the same prefix in other processes wait here
        saved = load_intact(folder / CHECKPOINT_FILE) if _finished(folder) else None
        if saved is not None:
            return SharedPrefix(folder, saved=saved)
        plan = prepared.run_plan(PlannedRun(StrategySpec(PREFIX_LABEL), unit.seed, unit.order_index, unit.order, unit.training))
        plan.prefix = SharedPrefix(folder, save=True)
        train_and_evaluate(plan, None, show_progress)
        return SharedPrefix(folder) if prefix_ready(folder, hashed=False) else None  # a failed prefix: the run trains task 1 itself


def train_time_saved(runs: list[PlannedRun], results: list[RunResult], grid: Path) -> float | None:
    """Training seconds the grid's prefixes saved: task 1 not trained by the forked runs, less each prefix's own training."""
    forked = [(p.prefix, r.metrics[TRAIN_TIME_SAVED_METRIC]) for p, r in zip(runs, results)
              if p.prefix is not None and TRAIN_TIME_SAVED_METRIC in r.metrics]  # forked in this invocation
    if not forked:
        return None
    spent = 0.0
    for unit in dict.fromkeys(unit for unit, _ in forked):
        state = load_state(prefix_folder(grid, unit))
        spent += state.metrics.get(TRAIN_TIME_METRIC, 0.0) if state else 0.0
    return sum(seconds for _, seconds in forked) - spent


def remove_spent_prefixes(runs: list[PlannedRun], results: list[RunResult], grid: Path) -> None:
    """Delete the weights of each prefix whose runs all finished (its state.json stays: the parent's saving is read from it)."""
    status = {p.name: r.status for p, r in zip(runs, results)}
    for unit in prefix_units(runs):
        if all(status.get(name) == FINISHED for name in unit.runs):
            remove_checkpoints(prefix_folder(grid, unit))
