"""Run a whole experiment grid into MLflow: one parent run per invocation, one child run per planned run."""

from __future__ import annotations

import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cl_harness.config.names import file_name
from cl_harness.errors import ConfigError, error_line
from cl_harness.grid.plan import PlannedRun, settings_key, share_pending_prefixes
from cl_harness.grid.prefix import ensure_prefix, remove_spent_prefixes, train_time_saved
from cl_harness.grid.prepare import PreparedExperiment
from cl_harness.report.plots import plot_accuracy_matrix
from cl_harness.runner.checkpoint import ERROR_FILE, RunState, load_state, read_run_file, save_state, write_run_file
from cl_harness.runner.run import RunResult, train_and_evaluate
from cl_harness.runner.prefix import PREFIX_TASKS
from cl_harness.tracking import writer
from cl_harness.tracking.schema import (
    FAILED,
    FINISHED,
    KILLED,
    SHARED_PREFIX_TASKS_TAG,
    TOKENISE_TIME_METRIC,
    TRAIN_TIME_SAVED_METRIC,
    strategy_param,
)
from cl_harness.tracking.store import absolute_uri, experiment_for, is_disk_failure, is_store_failure, logged_run_problem, open_store
from cl_harness.tracking.store_guard import StoreUnavailableError
from cl_harness.tracking.writer import RunLogger, default_tags, end_quietly
from cl_harness.grid.locks import RunBusy, grid_lock, run_lock
from cl_harness.tracking.writer import closed_on_failure
from cl_harness.report.glance import child_description
from cl_harness.tracking.glance import note

OnResult = Callable[[RunResult], None]


@dataclass(frozen=True)
class RunSpec:
    """What a worker process needs to run planned runs of a grid: how to load the experiment, where to log (picklable)."""

    experiment: str  # the experiment YAML, absolute
    overrides: tuple[str, ...]
    data_root: str | None
    tracking_uri: str  # absolute: workers may start in another folder
    experiment_id: str
    parent_run_id: str
    tags: dict[str, str]
    grid: str  # the grid's run folder, absolute (the one shared-disk assumption)
    runs: tuple[PlannedRun, ...]  # as the parent planned them (a search's best parameters applied)
    show_progress: bool = False
    threads: int | None = None  # torch threads per run; None keeps torch's default


@dataclass
class GridContext:
    """One grid invocation in the parent process: the store, the parent run and the run folders."""

    prepared: PreparedExperiment
    client: object
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    tags: dict[str, str]
    grid: Path
    show_progress: bool = True
    runs: list[PlannedRun] = field(init=False)

    def __post_init__(self) -> None:
        self.runs = list(self.prepared.runs)

    def run_here(self, planned: PlannedRun, wait: bool = True) -> RunResult:
        """Train and log one planned run in this process (RunBusy if another process holds it and not ``wait``)."""
        return run_child(self.prepared, planned, self.client, self.experiment_id, self.parent_run_id, self.tags,
                         self.show_progress, run_folder(self.grid, planned), wait=wait)

    def spec(self, threads: int | None = None) -> RunSpec:
        """The picklable description of this grid that workers load the experiment from again."""
        loaded = self.prepared.checked.loaded
        return RunSpec(
            str(loaded.path), tuple(loaded.overrides), loaded.data_root, absolute_uri(self.tracking_uri), self.experiment_id,
            self.parent_run_id, dict(self.tags), str(self.grid.resolve()), tuple(self.runs), False, threads,
        )

    def dispatch_order(self) -> list[int]:
        """Run indices with the first run of each shared prefix ahead of the others, so that parallel workers train
        different prefixes at once instead of waiting for the same one."""
        first: dict = {}
        for index, planned in enumerate(self.runs):
            if planned.prefix is not None:
                first.setdefault(planned.prefix, index)
        return sorted(range(len(self.runs)), key=lambda i: self.runs[i].prefix is not None and first[self.runs[i].prefix] != i)

    def lost(self, planned: PlannedRun, error: str) -> RunResult:
        """A run whose worker gave up or died: its MLflow run, if one was created and is still open, is marked FAILED."""
        run_id = writer.close_lost_child(self.client, self.experiment_id, self.parent_run_id, planned.name, error)
        tasks = [self.prepared.task_names[i] for i in planned.order]
        return RunResult(planned.strategy.label, planned.seed, tasks, [], planned.order_index, status=FAILED, error=error, run_id=run_id)


class Executor(Protocol):
    """Runs every planned run of a grid and returns their results in planned order."""

    def run(self, context: GridContext, on_result: OnResult | None) -> list[RunResult]: ...


def run_sequentially(context: GridContext, on_result: OnResult | None) -> list[RunResult]:
    """The local executor: one run after another in this process; runs another process holds are done last."""
    results: dict[int, RunResult] = {}
    busy = []
    for index, planned in enumerate(context.runs):
        try:
            results[index] = context.run_here(planned, wait=False)
        except RunBusy:
            print(f"{planned.name}: another process is training this run; doing the others first", file=sys.stderr, flush=True)
            busy.append(index)
            continue
        if on_result is not None:
            on_result(results[index])
    for index in busy:
        results[index] = context.run_here(context.runs[index])
        if on_result is not None:
            on_result(results[index])
    return [results[index] for index in range(len(context.runs))]


def log_results(logger: RunLogger, result: RunResult) -> None:
    """Final metrics and the accuracy-matrix artifacts (also for a partial matrix)."""
    if result.metrics:
        logger.log_final(result.metrics)
    writer.log_matrix(
        logger, result.tasks, result.initial, result.matrix, result.column_metrics,
        draw=lambda path: plot_accuracy_matrix(result.tasks, result.initial, result.matrix, path, title=result.run_name),
    )
    writer.log_valid_matrix(logger, result.tasks, result.valid_initial, result.valid_matrix)
    logger.set_tags(note(child_description(result.run_name, result.tasks, result.initial, result.matrix, result.metrics, result.status)))


def run_tags(prepared: PreparedExperiment, planned: PlannedRun) -> dict[str, str]:
    checked = prepared.checked
    return writer.child_tags(
        planned.strategy.label, planned.seed, planned.order_index, [checked.task_names[i] for i in planned.order],
        checked.stream_name, checked.scenario, checked.backbone.name, planned.key,
    )


def strategy_params(strategy) -> dict[str, object]:
    """A strategy's parameters as MLflow params, ``strategy.<label>.<param>`` (built-in and users' strategies alike)."""
    return {strategy_param(strategy.label, name): value for name, value in strategy.parameters().items()}


GRID_MARKER = "grid.json"  # in a comparison's folder: its parent run, planned runs and shared settings


def shared_settings(checked) -> dict:
    """What every run of a comparison shares: the MLflow experiment, the stream, the backbone and the training settings.
    Strategies, seeds and orders are not among them: adding some adds runs to the same comparison."""
    resolved = checked.loaded.resolved()
    config = checked.config
    return {"experiment": config.tracking.experiment or config.name, **{key: resolved[key] for key in ("stream", "backbone", "training")}}


def comparison_folder(checked) -> Path:
    """``<checkpoint_dir>/<experiment>/<hash of the shared settings>``: the folder of a comparison, holding one folder per
    run; the same shared settings find the same folder, whichever strategies, seeds and orders the grid lists."""
    return Path(checked.config.checkpoint_dir) / file_name(checked.config.name) / settings_key(shared_settings(checked))


def grid_folder(prepared: PreparedExperiment) -> Path:
    """The comparison folder of a prepared experiment (see ``comparison_folder``)."""
    return comparison_folder(prepared.checked)


def run_folder(grid: Path, planned: PlannedRun) -> Path:
    """``<run name>-<run key>``: a run's folder, found again by its own settings (``PlannedRun.key``)."""
    return grid / f"{file_name(planned.name.replace('/', '-'))}-{planned.key}"


def read_marker(grid: Path) -> dict:
    """A comparison folder's ``grid.json`` (empty when there is none); a damaged one is a ConfigError naming it and --restart."""
    marker = grid / GRID_MARKER
    return read_run_file(marker) if marker.is_file() else {}


@dataclass
class GridStatus:
    """A comparison before it runs: its folder, its planned runs already finished there, and whether it is a new one."""

    folder: Path
    done: set[str]  # names of the planned runs finished in their folders
    note: str | None  # set when the shared settings differ from the experiment's earlier comparison


def finished_in(folder: Path) -> bool:
    """Whether a run folder holds a finished run."""
    try:
        state = load_state(folder)
    except ConfigError:  # a damaged state file: the run is not done
        return False
    return state is not None and state.status == FINISHED


def grid_status(checked) -> GridStatus:
    """Which planned runs are done, and a note when this comparison is new although the experiment had another."""
    folder = comparison_folder(checked)
    done = {planned.name for planned in checked.runs if finished_in(run_folder(folder, planned))}
    return GridStatus(folder, done, None if (folder / GRID_MARKER).is_file() else new_comparison_note(folder, shared_settings(checked)))


def new_comparison_note(folder: Path, shared: dict) -> str | None:
    """What changed since the experiment's most recent other comparison (None when it has none)."""
    def settings_of(other: Path) -> dict | None:  # another comparison's; a damaged marker there is not this one's problem
        try:
            return read_marker(other).get("settings")
        except ConfigError:
            return None

    earlier = sorted((marker.stat().st_mtime, marker.parent) for marker in folder.parent.glob(f"*/{GRID_MARKER}")
                     if marker.parent != folder and settings_of(marker.parent))
    if not earlier:
        return None
    before = writer.flatten_params(settings_of(earlier[-1][1]))
    now = writer.flatten_params(shared)
    changed = [f"{key}: {before.get(key, '(unset)')} -> {now.get(key, '(unset)')}" for key in sorted(set(before) | set(now))
               if before.get(key) != now.get(key)]
    what = "; ".join(changed[:4]) + (f"; and {len(changed) - 4} more" if len(changed) > 4 else "")
    return (f"this is a new comparison: shared settings changed since the one in {earlier[-1][1]} ({what}). "
            "Every run trains from scratch under a new parent run; the earlier comparison stays as it was")


def run_child(prepared: PreparedExperiment, planned: PlannedRun, client, experiment_id: str, parent_id: str, tags: dict, show_progress: bool, folder: Path, wait: bool = True) -> RunResult:
    """One tracked run, resumed if its folder holds an unfinished one; a training failure marks it FAILED, the grid goes on.

    The run folder's lock is held throughout, so another process running the same grid waits for this run and then
    finds it finished, instead of training it a second time.
    """
    with run_lock(folder, planned.name, wait):
        return _run_child_locked(prepared, planned, client, experiment_id, parent_id, tags, show_progress, folder)


def _run_child_locked(prepared: PreparedExperiment, planned: PlannedRun, client, experiment_id: str, parent_id: str, tags: dict, show_progress: bool, folder: Path) -> RunResult:
    try:
        state = load_state(folder)
    except ConfigError as exc:  # a damaged state.json: the child a kill left RUNNING is ended, with the refusal as its error
        close_stale_child(client, experiment_id, parent_id, planned.name, str(exc))
        raise
    if state and state.status == FINISHED:
        note = f"already finished in {folder}: skipped (--restart runs the grid again)"
        return RunResult(
            planned.strategy.label, planned.seed, state.tasks, state.initial, planned.order_index,
            state.matrix, state.metrics, FINISHED, run_id=state.run_id, note=note,
        )
    logger = writer.reopen_run(client, state.run_id) if state else None
    if logger is None:
        writer.discard_empty_children(client, experiment_id, parent_id, planned.name)  # stopped while it was opened
        config = prepared.checked.resolved_config()
        config["strategies"] = [entry for entry in config["strategies"] if entry["name"] == planned.strategy.label]  # its own
        config["run"] = {"strategy": planned.strategy.label, "seed": planned.seed, "order": [prepared.task_names[i] for i in planned.order]}
        config["training"] = {**config["training"], **dict(planned.training)}  # the values this run trains with
        logger = writer.open_child(client, experiment_id, planned.name, {**tags, **run_tags(prepared, planned)}, parent_id, config,
                                   strategy_params(planned.strategy))
        state = state or RunState()
        state.run_id = logger.run_id  # a checkpoint from another store is continued in this new run
        save_state(folder, state)
    (folder / ERROR_FILE).unlink(missing_ok=True)  # an earlier attempt's traceback
    try:
        plan = prepared.run_plan(planned)
        if planned.prefix is not None and not state.steps_done:  # task 1 not trained yet: fork the shared prefix
            plan.prefix = ensure_prefix(prepared, planned.prefix, folder.parent, show_progress)
        result = train_and_evaluate(plan, logger, show_progress, folder=folder)
    except KeyboardInterrupt:
        end_quietly(logger, KILLED)
        raise
    except Exception as exc:  # a bug in a strategy's code, say: this run fails, the grid goes on (as in a worker process)
        if stops_the_grid(exc):
            end_quietly(logger, FAILED)
            raise
        return failed_run(planned, state.tasks or [prepared.task_names[i] for i in planned.order], logger, folder, exc)
    except BaseException:
        end_quietly(logger, FAILED)
        raise
    with closed_on_failure(logger):
        log_results(logger, result)
        if result.error:
            writer.record_error(logger, result.error)
    logger.end(result.status)
    return result


def stops_the_grid(exc: Exception) -> bool:
    """Whether an error in a run stops the whole grid: a refused input, or a failing store or disk (every run would meet it)."""
    return isinstance(exc, ConfigError) or is_store_failure(exc) or is_disk_failure(exc)


def failed_run(planned: PlannedRun, tasks: list[str], logger: RunLogger, folder: Path, exc: Exception) -> RunResult:
    """A run ended FAILED by an unexpected error: one line (type, message, where raised) as its error, the traceback in
    the run folder; the folder's checkpoint stays, so the same command resumes the run once the code is fixed."""
    path = folder / ERROR_FILE
    path.write_text("".join(traceback.format_exception(exc)), encoding="utf-8")
    error = f"{error_line(exc)}; traceback in {path}"
    with closed_on_failure(logger):
        writer.record_error(logger, error)
    end_quietly(logger, FAILED)
    return RunResult(planned.strategy.label, planned.seed, tasks, [], planned.order_index, status=FAILED, error=error, run_id=logger.run_id)


def close_stale_child(client, experiment_id: str, parent_id: str, name: str, error: str) -> None:
    """End FAILED (with ``error``) the child ``name`` of ``parent_id`` that a killed process left RUNNING; a store failure is ignored."""
    try:
        writer.close_lost_child(client, experiment_id, parent_id, name, error)
    except Exception:  # noqa: BLE001 - the store's failure must not hide the refusal on its way up
        pass


def run_experiment(
    prepared: PreparedExperiment,
    tracking_uri: str | None = None,
    show_progress: bool = True,
    on_result: OnResult | None = None,
    restart: bool = False,
    executor: Executor | None = None,
    on_finish: Callable | None = None,
) -> list[RunResult]:
    """Every planned run of the experiment as a child of one parent run, then the comparison report on the parent.

    The experiment and the parent run are created here, before any worker starts; ``executor``
    (default: one run after another in this process) runs the children. ``on_finish`` gets the
    grid's GridGlance (table, report, UI links) once the parent run is closed.
    """
    config = prepared.config
    uri, client = open_store(tracking_uri or config.tracking.uri)
    name = config.tracking.experiment or config.name
    experiment_id = experiment_for(client, uri, name)
    tags = default_tags(None)
    grid = grid_folder(prepared)
    with grid_lock(grid):
        if restart and grid.exists():  # keep the old folder, out of the way
            grid.rename(grid.with_name(f"{grid.name}.before-{time.strftime('%Y%m%d-%H%M%S')}"))
        done = {p.name for p in prepared.runs if finished_in(run_folder(grid, p))}
        check_finished_runs_logged(client, uri, experiment_id, grid, [p for p in prepared.runs if p.name in done])
        prepared = prepared.with_runs(share_pending_prefixes(prepared.runs, done))
        parent = open_parent(client, experiment_id, prepared, grid, tags)
    context = GridContext(prepared, client, uri, experiment_id, parent.run_id, tags, grid, show_progress)
    try:  # from here on, a failure ends the parent run FAILED (KILLED on Ctrl-C), never leaves it RUNNING
        with grid_lock(grid):  # the parent is shared by every process running this grid: one writes it at a time
            parent.log_final({TOKENISE_TIME_METRIC: prepared.tokenise_seconds})
        results = executor.run(context, on_result) if executor is not None else run_sequentially(context, on_result)
        with grid_lock(grid):
            saved = train_time_saved(context.runs, results, grid)
            if saved is not None:
                parent.log_final({TRAIN_TIME_SAVED_METRIC: saved})
                parent.set_tags({SHARED_PREFIX_TASKS_TAG: str(PREFIX_TASKS)})
            remove_spent_prefixes(context.runs, results, grid)
            glance = finish_parent(client, parent, name, results)
    except KeyboardInterrupt:
        end_quietly(parent, KILLED)
        raise
    except BaseException:
        end_quietly(parent, FAILED)
        raise
    if on_finish is not None:
        on_finish(glance)
    return results


def check_finished_runs_logged(client, uri: str, experiment_id: str, grid: Path, finished: list[PlannedRun]) -> None:
    """Refuse (exit 3), before anything is written to the store, a comparison whose finished runs are not logged in it
    under its parent run (another store, or deleted there): skipped as finished, they would be missing from its table."""
    if not finished:
        return
    parent_id = read_marker(grid).get("parent_run_id")
    parent_problem = logged_run_problem(client, parent_id, experiment_id) if parent_id else None
    problems = [f"its parent: {parent_problem}"] if parent_problem else [
        f"{planned.name}: {why}" for planned in finished
        if (why := logged_run_problem(client, load_state(run_folder(grid, planned)).run_id, experiment_id, parent_id, finished=True))]
    if problems:
        listed = "; ".join(problems[:2]) + (f"; and {len(problems) - 2} more" if len(problems) > 2 else "")
        count = len(finished) if parent_problem else len(problems)
        raise StoreUnavailableError(
            f"{grid} holds {count} finished run(s) of this comparison whose results are not in {uri} as finished ({listed})\n"
            "  hint: use the store they were logged to (--tracking-uri), restore deleted runs (`mlflow runs restore --run-id "
            "ID`), or train again with --restart")


def open_parent(client, experiment_id: str, prepared: PreparedExperiment, grid: Path, tags: dict) -> RunLogger:
    """The comparison's parent run: reopened when this folder's comparison was started before in this store, else new.
    Either way it records this invocation's config and planned runs: its comparison holds them, old and new."""
    checked = prepared.checked
    shared = shared_settings(checked)
    parent = writer.reopen_run(client, read_marker(grid).get("parent_run_id"), experiment_id)
    if parent is None:
        parent = writer.open_parent(client, experiment_id, checked.name,
                                    {**tags, **writer.parent_tags(checked.stream_name, checked.scenario)}, shared)
    names = [p.name for p in checked.runs]
    writer.log_plan(parent, checked.resolved_config(), names, [p.key for p in checked.runs])
    write_run_file(grid / GRID_MARKER, json.loads(json.dumps({"parent_run_id": parent.run_id, "runs": names, "settings": shared}, default=str)))
    return parent


def finish_parent(client, parent: RunLogger, experiment_name: str, results: list[RunResult]):
    """Summary metrics and description on the parent run, the run closed, then its comparison report (a GridGlance)."""
    from cl_harness.grid.finish import finish_grid

    return finish_grid(client, parent, experiment_name, results)
