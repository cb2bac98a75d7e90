"""Run the per-strategy search: one Optuna study per strategy, trials trained and scored on validation data only.

TPE sampler (Bergstra et al. 2011) and a median or Hyperband (Li et al. 2018) pruner fed the
per-step mean validation accuracy over the tasks seen so far. The objective is the final mean
validation accuracy (``valid_acc``), averaged over the trial seeds; the test matrix a trial also
computes is never read. Studies live in ``search.db`` (SQLite) in the search folder, so a killed
search continues where it stopped (its unfinished trials marked FAIL, missing ones run again), and
several worker processes can share one study; the best parameters go to ``best_params.yaml`` beside it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from cl_harness.config.names import file_name
from cl_harness.errors import ConfigError, error_line, short_repr
from cl_harness.grid.experiment import stops_the_grid
from cl_harness.grid.plan import PlannedRun, PrefixUnit
from cl_harness.grid.prefix import PREFIXES_FOLDER, ensure_prefix
from cl_harness.grid.prepare import CheckedExperiment, PreparedExperiment, shares_prefix
from cl_harness.runner.checkpoint import RESTART_HINT, read_run_file, remove_checkpoints, write_run_file
from cl_harness.runner.run import train_and_evaluate
from cl_harness.search.config import ParamSpace, SearchPlan, _plugin_params
from cl_harness.strategies.registry import StrategySpec
from cl_harness.tracking import schema, writer

STUDY_DB = "search.db"  # the Optuna studies (SQLite), in the search folder
BEST_PARAMS_FILE = schema.BEST_PARAMS_ARTIFACT  # in the search folder, and logged on the search parent
FINISHED_STATES = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)  # the trials that count toward n_trials


def sample(trial: optuna.Trial, name: str, space: ParamSpace) -> Any:
    """One value of ``space`` suggested by the trial."""
    if space.choice is not None:
        return trial.suggest_categorical(name, space.choice)
    if space.type == "int":
        return trial.suggest_int(name, int(space.low), int(space.high), log=space.log)
    return trial.suggest_float(name, space.low, space.high, log=space.log)


def apply_params(spec: StrategySpec, params: dict[str, Any]) -> tuple[StrategySpec, dict[str, Any]]:
    """The strategy with its plugin parameters replaced, and the ``training.*`` values its runs use."""
    training = {k.removeprefix("training."): v for k, v in params.items() if k.startswith("training.")}
    known = _plugin_params(spec)
    plugins = list(spec.plugins)
    for name, value in params.items():
        if name.startswith("training."):
            continue
        index, field_name = known[name]
        plugin = plugins[index]
        plugins[index] = dataclasses.replace(plugin, config=dataclasses.replace(plugin.config, **{field_name: value}))
    return StrategySpec(spec.label, plugins), training


class TrialReporter:
    """A stand-in run logger for a trial: reports the per-step validation accuracy to Optuna and prunes.

    Forwards everything to ``inner`` (an MLflow RunLogger) when one is given.
    """

    def __init__(self, trial: optuna.Trial, offset: int, inner=None) -> None:
        self.trial, self.offset, self.inner = trial, offset, inner
        self.run_id = inner.run_id if inner is not None else None

    def logged_steps(self, key: str) -> set[int]:
        return self.inner.logged_steps(key) if self.inner is not None else set()

    def set_tags(self, tags: dict[str, str]) -> None:
        if self.inner is not None:
            self.inner.set_tags(tags)

    def __getattr__(self, name: str):
        """Anything else a run logs (final metrics, artifacts): to ``inner``, or nowhere."""
        inner = self.__dict__.get("inner")
        return getattr(inner, name) if inner is not None else (lambda *args, **kwargs: None)

    def log_step(self, step: int, metrics: dict[str, float]) -> None:
        if self.inner is not None:
            self.inner.log_step(step, metrics)
        value = metrics.get(schema.VALID_SEEN_AVG_METRIC)  # validation only: the test metrics in ``metrics`` are not read
        if step >= 1 and value is not None:
            self.trial.report(value, self.offset + step)
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned after step {step}: valid acc {value:.3f}")


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def open_study(folder: Path, label: str, plan: SearchPlan, worker: int = 0) -> optuna.Study:
    """The strategy's study in ``folder/search.db`` (created, or loaded to resume), shared by every worker process.

    Each worker samples with its own seed (``sampler_seed + worker``), so parallel workers do not propose the same trials.
    """
    folder.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{folder / STUDY_DB}", engine_kwargs={"connect_args": {"timeout": 60}})
    return optuna.create_study(
        study_name=label, storage=storage, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=plan.config.sampler_seed + worker), pruner=make_pruner(plan.config.pruner),
    )


def fail_stale_trials(study: optuna.Study) -> list[int]:
    """Mark FAIL the trials a killed search left RUNNING (call it only while no worker runs); returns their numbers."""
    stale = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
    for trial in stale:
        study._storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    return [trial.number for trial in stale]


def finished_trials(study: optuna.Study) -> int:
    """How many trials of the study finished (complete or pruned): those that count toward ``n_trials``."""
    return len(study.get_trials(deepcopy=False, states=FINISHED_STATES))


def remaining_trials(study: optuna.Study, plan: SearchPlan) -> int:
    """How many trials are still to run: ``n_trials`` less the finished (complete or pruned) ones."""
    return max(0, plan.config.n_trials - finished_trials(study))


def search_folder(experiment: PreparedExperiment | CheckedExperiment) -> Path:
    """``<checkpoint_dir>/<experiment>/search-<hash>``: the hash leaves out ``search.n_trials``, so more trials resume."""
    checked = experiment.checked if isinstance(experiment, PreparedExperiment) else experiment
    config = checked.resolved_config()
    config.pop("tracking", None)
    config["search"] = {k: v for k, v in (config.get("search") or {}).items() if k != "n_trials"}
    config.pop("checkpoint_every_s", None)  # trials keep no checkpoints
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:12]
    root = Path(checked.config.checkpoint_dir)
    return root / file_name(checked.config.name) / f"search-{digest}"


TrainFn = Callable[..., Any]  # train_and_evaluate's signature: (RunPlan, logger, show_progress=...)
TrialLogger = Callable[..., Any]  # (strategy label, trial number, seed, params) -> a RunLogger
OnTrial = Callable[[str], None]  # receives one line per ended trial (trial_line)


def value_text(value: Any) -> str:
    """A parameter value as a line shows it: floats to 4 significant digits, true/false/null spelt as in YAML."""
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def format_params(params: dict[str, Any]) -> str:
    """``ewc_lambda=12.3, mode=online``: a trial's parameters as a line shows them."""
    return ", ".join(f"{k}={value_text(v)}" for k, v in params.items())


def trial_line(label: str, trial: optuna.trial.FrozenTrial, finished: int, n_trials: int) -> str:
    """``search ewc: trial 2 (3 of 10): valid_acc 55.0% (ewc_lambda=12.3)``, or pruned or failed, as a trial ends.

    The trial is named by its number (Optuna's, from 0, as in its MLflow run ``ewc/trial2/seed0`` and ``best_params.yaml``);
    ``finished`` of ``n_trials`` have finished with it. A failed trial does not count toward ``n_trials``.
    """
    params = format_params(trial.params)
    state = trial.state.name.lower()
    if state == "complete" and trial.value is not None and not math.isnan(trial.value):
        state = f"valid_acc {100 * trial.value:.1f}%"
    elif state == "pruned":
        state = f"pruned after step {trial.last_step}" if trial.last_step is not None else "pruned"
    counted = f"{finished} of {n_trials}" if trial.state in FINISHED_STATES else "not counted"
    return f"search {label}: trial {trial.number} ({counted}): {state} ({params})"


@dataclass
class StrategyResult:
    """The outcome of one strategy's study."""

    label: str
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    n_complete: int
    n_pruned: int


def trials_share_prefix(prepared: PreparedExperiment, plan: SearchPlan, spec: StrategySpec) -> bool:
    """Whether the strategy's trials start from shared task-1 prefixes (``runner/prefix.py``), as a grid's runs do.

    They can when the experiment shares prefixes, the strategy trains task 1 as naive does, and no searched
    ``training.*`` value is drawn from a range (a range never repeats a value: each prefix would serve one trial).
    """
    spaces = plan.spaces[spec.label]
    ranged = any(name.startswith("training.") and space.choice is None for name, space in spaces.items())
    return not ranged and spec.naive_prefix_tasks >= 1 and shares_prefix(prepared.checked.loaded)


TRIAL_ERRORS = (ValueError, RuntimeError)  # what fails one trial (Optuna marks it FAIL) instead of the search


def run_trials(prepared: PreparedExperiment, spec: StrategySpec, study: optuna.Study, plan: SearchPlan, n_trials: int,
               train: TrainFn | None = None, trial_logger: TrialLogger | None = None, prefix_root: Path | None = None,
               on_trial: OnTrial | None = None) -> None:
    """Run ``n_trials`` more trials of the strategy's study (several processes may do so on one study at once);
    ``on_trial`` gets a line as each ends.

    With ``prefix_root`` (the search folder) and ``trials_share_prefix``, each trial seed forks task 1 from the prefix
    of its seed and training values under ``prefix_root/prefixes/``, trained by the first trial that needs it.
    """
    train = train or train_and_evaluate
    order = tuple(range(len(prepared.checked.tasks)))
    n_steps = len(order)
    sharing = prefix_root is not None and trials_share_prefix(prepared, plan, spec)

    def objective(trial: optuna.Trial) -> float:
        params = {name: sample(trial, name, space) for name, space in plan.spaces[spec.label].items()}
        trial_spec, training = apply_params(spec, params)
        values = []
        for position, seed in enumerate(plan.config.seeds):
            inner = trial_logger(spec.label, trial.number, seed, params) if trial_logger else None
            reporter = TrialReporter(trial, position * n_steps, inner)
            planned = PlannedRun(trial_spec, seed, 0, order, tuple(training.items()))
            try:
                run_plan = prepared.run_plan(planned)
                if sharing:
                    run_plan.prefix = ensure_prefix(prepared, PrefixUnit(seed, 0, order, (), planned.training), prefix_root, False)
                result = train(run_plan, reporter, show_progress=False)
            except BaseException as exc:  # pruned, interrupted or broken: the trial run does not stay RUNNING
                failed = isinstance(exc, Exception) and not isinstance(exc, optuna.TrialPruned) and not stops_the_grid(exc)
                if inner is not None:
                    if failed:
                        writer.record_error(inner, error_line(exc))
                    inner.end(schema.KILLED if isinstance(exc, (optuna.TrialPruned, KeyboardInterrupt)) else schema.FAILED)
                if failed and not isinstance(exc, TRIAL_ERRORS):  # a strategy's bug (a TypeError, say) fails this trial only
                    raise RuntimeError(error_line(exc)) from exc
                raise
            if inner is not None:
                if result.metrics:
                    inner.log_final(result.metrics)
                inner.end(result.status)
            value = result.metrics.get(schema.VALID_ACC_METRIC, math.nan) if result.status == "FINISHED" else math.nan
            values.append(value)
        return float(sum(values) / len(values))

    if n_trials > 0:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        ended = [lambda study_, trial: on_trial(trial_line(spec.label, trial, finished_trials(study_), plan.config.n_trials))
                 ] if on_trial else None
        study.optimize(objective, n_trials=n_trials, catch=TRIAL_ERRORS, callbacks=ended)


def study_result(study: optuna.Study, label: str) -> StrategyResult:
    """The strategy's best finished trial, and how many trials finished and were pruned."""
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    pruned = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))
    finite = [t for t in complete if t.value is not None and not math.isnan(t.value)]
    if not finite:
        return StrategyResult(label, None, {}, None, len(complete), len(pruned))
    best = max(finite, key=lambda t: (t.value, -t.number))
    return StrategyResult(label, best.value, dict(best.params), best.number, len(complete), len(pruned))


def searched(prepared: PreparedExperiment, plan: SearchPlan) -> list[StrategySpec]:
    """The experiment's strategies that the search block names, in the experiment's order."""
    return [spec for spec in prepared.checked.strategies if spec.label in plan.spaces]


def run_search(prepared: PreparedExperiment, plan: SearchPlan, folder: Path, train: TrainFn | None = None,
               trial_logger: TrialLogger | None = None, on_result: Callable[[StrategyResult], None] | None = None,
               on_trial: OnTrial | None = None) -> list[StrategyResult]:
    """Search every strategy named in ``plan`` in this process and write ``best_params.yaml``; one result per strategy.

    Trials a killed search left RUNNING are failed first; the missing ones run, so ``n_trials`` finish in all.
    """
    results = []
    for spec in searched(prepared, plan):
        study = open_study(folder, spec.label, plan)
        fail_stale_trials(study)
        run_trials(prepared, spec, study, plan, remaining_trials(study, plan), train, trial_logger, prefix_root=folder, on_trial=on_trial)
        results.append(study_result(study, spec.label))
        if on_result is not None:
            on_result(results[-1])
    write_best_params(folder / BEST_PARAMS_FILE, results)
    for prefix in (folder / PREFIXES_FOLDER).glob("*"):  # every trial has run: the prefixes' weights are not needed again
        remove_checkpoints(prefix)
    return results


def write_best_params(path: Path, results: list[StrategyResult]) -> Path:
    data = {
        r.label: {"params": r.best_params, "valid_acc": r.best_value, "trial": r.best_trial,
                  "complete_trials": r.n_complete, "pruned_trials": r.n_pruned}
        for r in results
    }
    write_run_file(path, data)
    return path


def read_best_params(path: Path) -> dict[str, dict[str, Any]]:
    """``{label: params}`` from ``best_params.yaml`` (empty when there is none)."""
    if not path.is_file():
        return {}
    data = read_run_file(path)
    for label, entry in data.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("params") or {}, dict):
            raise ConfigError(f"the file is damaged (the entry of {short_repr(label, 60)} has no mapping of params)", file=path,
                              hint=RESTART_HINT)
    return {label: dict(entry.get("params") or {}) for label, entry in data.items()}
