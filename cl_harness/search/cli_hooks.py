"""What ``cl-harness run`` does with a ``search:`` block, and ``cl-harness search-report`` (kept out of cli.py)."""

from __future__ import annotations

import functools
import json
import math
import os
import warnings
from pathlib import Path
from typing import Any

from cl_harness.config.names import file_name
from cl_harness.grid.prepare import CheckedExperiment, PreparedExperiment
from cl_harness.search.config import SearchPlan, parse_search
from cl_harness.search.run import BEST_PARAMS_FILE, StrategyResult, format_params, read_best_params, search_folder, study_result
from cl_harness.search.tracked import apply_best, best_runs, run_tracked_search
from cl_harness.search.workers import run_in_workers, run_on_ray

#: PED-ANOVA's warning when its top-quantile trials (the best 10%) are every trial, as when the best values tie.
SAME_TRIALS_WARNING = "Target and region quantiles select the same set of trials"


def check_search(checked: CheckedExperiment) -> SearchPlan | None:
    """The experiment's ``search:`` block checked against its strategies and validation data (ConfigError at its key)."""
    return parse_search(checked.config.search, checked.strategies, checked.loaded.source, any(t.valid_labels for t in checked.tasks))


def describe_search(plan: SearchPlan, skip: bool = False, only: bool = False) -> list[str]:
    """What ``run`` does before the runs (``validate``, ``--dry-run``): the trials per strategy, the parameters each tunes;
    ``skip`` and ``only``: ``--skip-search`` and ``--search-only``."""
    if skip:
        return ["search: skipped (--skip-search); the runs use the best parameters of an earlier search, else the config's own"]
    config, spaces = plan.config, plan.spaces
    lines = [f"search first: {config.n_trials} trials per strategy on seed(s) {', '.join(map(str, config.seeds))}, "
             f"maximising {config.objective} ({config.pruner} pruner):"]
    lines += [f"  {label:<40} tunes {', '.join(params)}" for label, params in spaces.items()]
    lines.append("then stop (--search-only)" if only else "then the runs, each strategy with its best parameters (shared prefixes as those allow)")
    return lines


def _print_result(result: StrategyResult) -> None:
    if result.best_value is None:
        print(f"search {result.label}: no trial finished ({result.n_pruned} pruned)", flush=True)
        return
    params = format_params(result.best_params)
    print(f"search {result.label}: best valid_acc {100 * result.best_value:.1f}% (trial {result.best_trial}; "
          f"{result.n_complete} finished, {result.n_pruned} pruned): {params}", flush=True)


def planned_after_search(checked: CheckedExperiment, plan: SearchPlan, skip_search: bool) -> tuple[CheckedExperiment, set[str]]:
    """What ``--dry-run`` shows of an experiment with a search: its runs with the best parameters found so far (those
    ``--skip-search`` trains), and the strategies whose values the search is still to pick (none with ``--skip-search``)."""
    best = read_best_params(search_folder(checked) / BEST_PARAMS_FILE)
    tuned = checked.with_runs(best_runs(checked, best)) if best else checked
    return tuned, set() if skip_search else set(plan.spaces)


def search_before_runs(prepared: PreparedExperiment, uri: str, args) -> PreparedExperiment | None:
    """Search (unless ``--skip-search``), then the experiment with the best parameters; None with ``--search-only``.

    ``--workers N`` runs N trials at once in local processes; ``--executor ray`` runs them as Ray tasks, as many at
    once as the cluster has room for at ``--cpus-per-run`` CPUs (default 1) each.
    """
    plan = check_search(prepared.checked)
    folder = search_folder(prepared)
    if not args.verbose:  # "A new study created in RDB ..."
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
    if not args.skip_search:
        parallel, threads = None, None
        if args.executor == "ray":
            cpus = args.cpus_per_run or 1.0
            parallel = functools.partial(run_on_ray, prepared, plan, address=args.ray_address, cpus=cpus, gpus=args.gpus_per_run)
            threads = max(1, math.ceil(cpus))
        elif args.workers > 1:
            parallel = functools.partial(run_in_workers, prepared, plan, workers=args.workers)
            threads = max(1, int(args.cpus_per_run or (os.cpu_count() or 1) // args.workers))  # per worker
        run_tracked_search(prepared, plan, uri, on_result=_print_result, parallel=parallel, threads=threads,
                           on_trial=functools.partial(print, flush=True))
        print(f"best parameters: {folder / BEST_PARAMS_FILE}", flush=True)
    if args.search_only:
        return None
    best = read_best_params(folder / BEST_PARAMS_FILE)
    return apply_best(prepared, best) if best else prepared


def search_report(args) -> int:
    """Print the best trials per strategy, parameter importances; write the optimisation-history plots, log them."""
    import optuna

    from cl_harness.tracking import writer
    from cl_harness.tracking.reader import read_search
    from cl_harness.tracking.store import open_store

    _, client = open_store(args.tracking_uri)
    search = read_search(client, args.experiment)
    out = Path(args.out) if args.out else Path("reports") / file_name(search.experiment_name) / "search"
    out.mkdir(parents=True, exist_ok=True)
    print(f"search run {search.parent_run_id} of {search.experiment_name!r}: {len(search.trials)} trial runs")
    for label, runs in sorted(search.by_strategy().items()):
        study = optuna.load_study(study_name=label, storage=f"sqlite:///{search.storage}") if Path(search.storage).is_file() else None
        _print_strategy(label, runs, study)
        if study is not None and study_result(study, label).n_complete:
            plot = out / f"optimization_history_{file_name(label)}.png"
            _history_plot(study, plot)
            writer.log_search_plot(client, search.parent_run_id, plot)
    print(f"\nplots: {out}")
    return 0


def _print_strategy(label: str, runs: list, study) -> None:
    """A strategy's finished and pruned counts, its best five trial runs (the best trial first among ties), importances."""
    done = ranked([r for r in runs if r.valid_acc is not None], study_result(study, label).best_trial if study else None)
    print(f"\n{label}: {len(done)} finished, {sum(r.status == 'KILLED' for r in runs)} pruned")
    for run in done[:5]:
        print(f"  {run.name:<28} valid_acc {100 * run.valid_acc:5.1f}%  {format_params({k: tag_value(v) for k, v in run.params.items()})}")
    if study is not None:
        line = importances_line(study)
        if line:
            print(f"  importances: {line}")


def ranked(runs: list, best_trial: int | None) -> list:
    """Trial runs by validation accuracy, best first; among equal ones the study's best trial, then by trial number."""
    return sorted(runs, key=lambda run: (-run.valid_acc, run.trial != best_trial, math.inf if run.trial is None else run.trial, run.name))


def tag_value(text: str) -> Any:
    """A ``param.*`` tag's value as the number, boolean or null it spells (``0.001``, ``true``; an older search's
    ``True``); other text as it is."""
    older = {"True": True, "False": False, "None": None}
    if text in older:
        return older[text]
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if value is None or isinstance(value, (bool, int, float)) else text


def importances_line(study) -> str | None:
    """The parameters' importances in the study (Optuna's PED-ANOVA), or why there are none; None below 2 finished trials."""
    import optuna

    values = [t.value for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if len(values) < 2 or not study.best_params:
        return None
    if len(set(values)) == 1:  # PED-ANOVA would warn that its top trials are all the trials, and give every parameter 0
        return "not computable (every finished trial has the same valid_acc)"
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=SAME_TRIALS_WARNING, category=UserWarning)  # also possible with ties above 10 trials
        try:
            importances = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError) as exc:
            return f"not computable ({exc})"
    return ", ".join(f"{k} {v:.2f}" for k, v in importances.items())


def _history_plot(study, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # Optuna marks its matplotlib plots experimental
        axes = optuna.visualization.matplotlib.plot_optimization_history(study)
    axes.figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(axes.figure)
