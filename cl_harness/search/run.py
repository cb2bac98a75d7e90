"""Run the per-strategy search: one Optuna study per strategy, trials trained and scored on validation data only.

TPE sampler (Bergstra et al. 2011) and a median or Hyperband (Li et al. 2018) pruner fed the
per-step mean validation accuracy over the tasks seen so far. The objective is the final mean
validation accuracy (``valid_acc``), averaged over the trial seeds; the test matrix a trial also
computes is never read. Studies live in ``search.db`` (SQLite) in the search folder, so a killed
search continues where it stopped; the best parameters go to ``best_params.yaml`` beside it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from cl_harness.grid.plan import PlannedRun
from cl_harness.grid.prepare import PreparedExperiment
from cl_harness.runner.run import train_and_evaluate
from cl_harness.search.config import ParamSpace, SearchPlan, _plugin_params
from cl_harness.strategies.registry import PluginSpec, StrategySpec
from cl_harness.tracking import schema

STUDY_DB = "search.db"  # the Optuna studies (SQLite), in the search folder
BEST_PARAMS_FILE = schema.BEST_PARAMS_ARTIFACT  # in the search folder, and logged on the search parent


def sample(trial: optuna.Trial, name: str, space: ParamSpace) -> Any:
    """One value of ``space`` suggested by the trial."""
    if space.choice is not None:
        return trial.suggest_categorical(name, space.choice)
    if space.type == "int":
        return trial.suggest_int(name, int(space.low), int(space.high), log=space.log)
    return trial.suggest_float(name, space.low, space.high, log=space.log)


def apply_params(prepared: PreparedExperiment, spec: StrategySpec, params: dict[str, Any]) -> tuple[PreparedExperiment, StrategySpec]:
    """The experiment with ``training.*`` values replaced and the strategy with its plugin parameters replaced."""
    training = {k.removeprefix("training."): v for k, v in params.items() if k.startswith("training.")}
    known = _plugin_params(spec)
    plugins = list(spec.plugins)
    for name, value in params.items():
        if name.startswith("training."):
            continue
        index, field_name = known[name]
        plugin = plugins[index]
        plugins[index] = PluginSpec(plugin.name, dataclasses.replace(plugin.config, **{field_name: value}), plugin.info)
    if training:
        loaded = prepared.checked.loaded
        config = dataclasses.replace(loaded.config, training=dataclasses.replace(loaded.config.training, **training))
        checked = dataclasses.replace(prepared.checked, loaded=dataclasses.replace(loaded, config=config))
        prepared = dataclasses.replace(prepared, checked=checked)
    return prepared, StrategySpec(spec.label, plugins)


class TrialReporter:
    """A stand-in run logger for a trial: reports the per-step validation accuracy to Optuna and prunes.

    Forwards everything to ``inner`` (an MLflow RunLogger) when one is given.
    """

    def __init__(self, trial: optuna.Trial, offset: int, inner=None) -> None:
        self.trial, self.offset, self.inner = trial, offset, inner
        self.run_id = inner.run_id if inner is not None else None

    def logged_steps(self, key: str) -> set[int]:
        return self.inner.logged_steps(key) if self.inner is not None else set()

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


def open_study(folder: Path, label: str, plan: SearchPlan) -> optuna.Study:
    """The strategy's study in ``folder/search.db`` (created, or loaded to resume); trials left RUNNING by a kill fail."""
    folder.mkdir(parents=True, exist_ok=True)
    storage = optuna.storages.RDBStorage(f"sqlite:///{folder / STUDY_DB}")
    study = optuna.create_study(
        study_name=label, storage=storage, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=plan.config.sampler_seed), pruner=make_pruner(plan.config.pruner),
    )
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)
    return study


TrainFn = Callable[..., Any]  # train_and_evaluate's signature: (RunPlan, logger, show_progress=...)


@dataclass
class StrategyResult:
    """The outcome of one strategy's study."""

    label: str
    best_value: float | None
    best_params: dict[str, Any]
    best_trial: int | None
    n_complete: int
    n_pruned: int


def search_strategy(prepared: PreparedExperiment, spec: StrategySpec, plan: SearchPlan, folder: Path,
                    train: TrainFn | None = None, trial_logger: Callable | None = None) -> StrategyResult:
    """Run the strategy's remaining trials (``n_trials`` in all, finished ones counted) and return its best."""
    train = train or train_and_evaluate
    study = open_study(folder, spec.label, plan)
    done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    order = tuple(range(len(prepared.checked.tasks)))
    n_steps = len(order)

    def objective(trial: optuna.Trial) -> float:
        params = {name: sample(trial, name, space) for name, space in plan.spaces[spec.label].items()}
        trial_prepared, trial_spec = apply_params(prepared, spec, params)
        values = []
        for position, seed in enumerate(plan.config.seeds):
            inner = trial_logger(spec, trial.number, seed, params) if trial_logger else None
            reporter = TrialReporter(trial, position * n_steps, inner)
            try:
                result = train(trial_prepared.run_plan(PlannedRun(trial_spec, seed, 0, order)), reporter, show_progress=False)
            except BaseException as exc:  # pruned, interrupted or broken: the trial run does not stay RUNNING
                if inner is not None:
                    inner.end(schema.KILLED if isinstance(exc, (optuna.TrialPruned, KeyboardInterrupt)) else schema.FAILED)
                raise
            if inner is not None:
                if result.metrics:
                    inner.log_final(result.metrics)
                inner.end(result.status)
            value = result.metrics.get(schema.VALID_ACC_METRIC, math.nan) if result.status == "FINISHED" else math.nan
            values.append(value)
        return float(sum(values) / len(values))

    remaining = plan.config.n_trials - len(study.get_trials(deepcopy=False, states=done))
    if remaining > 0:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study.optimize(objective, n_trials=remaining, catch=(ValueError, RuntimeError))
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    pruned = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.PRUNED,))
    finite = [t for t in complete if t.value is not None and not math.isnan(t.value)]
    if not finite:
        return StrategyResult(spec.label, None, {}, None, len(complete), len(pruned))
    best = max(finite, key=lambda t: (t.value, -t.number))
    return StrategyResult(spec.label, best.value, dict(best.params), best.number, len(complete), len(pruned))


def run_search(prepared: PreparedExperiment, plan: SearchPlan, folder: Path, train: TrainFn | None = None,
               trial_logger: Callable | None = None, on_result: Callable[[StrategyResult], None] | None = None) -> list[StrategyResult]:
    """Search every strategy named in ``plan`` and write ``best_params.yaml``; returns one result per strategy."""
    results = []
    for spec in prepared.checked.strategies:
        if spec.label in plan.spaces:
            result = search_strategy(prepared, spec, plan, folder, train, trial_logger)
            results.append(result)
            if on_result is not None:
                on_result(result)
    write_best_params(folder / BEST_PARAMS_FILE, results)
    return results


def write_best_params(path: Path, results: list[StrategyResult]) -> Path:
    data = {
        r.label: {"params": r.best_params, "valid_acc": r.best_value, "trial": r.best_trial,
                  "complete_trials": r.n_complete, "pruned_trials": r.n_pruned}
        for r in results
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


def read_best_params(path: Path) -> dict[str, dict[str, Any]]:
    """``{label: params}`` from ``best_params.yaml`` (empty when there is none)."""
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {label: dict(entry.get("params") or {}) for label, entry in data.items()}
