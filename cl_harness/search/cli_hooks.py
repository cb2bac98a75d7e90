"""What ``cl-harness run`` does with a ``search:`` block, and ``cl-harness search-report`` (kept out of cli.py)."""

from __future__ import annotations

import sys
from pathlib import Path

from cl_harness.errors import ConfigError
from cl_harness.runner.prepare import PreparedExperiment
from cl_harness.search.config import parse_search
from cl_harness.search.run import BEST_PARAMS_FILE, SEARCH_ROLE, StrategyResult, read_best_params
from cl_harness.search.tracked import ROLE_TAG, TRIAL_ROLE, apply_best, run_tracked_search, search_folder


def _print_result(result: StrategyResult) -> None:
    if result.best_value is None:
        print(f"search {result.label}: no trial finished ({result.n_pruned} pruned)", flush=True)
        return
    params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in result.best_params.items())
    print(f"search {result.label}: best valid_acc {100 * result.best_value:.1f}% (trial {result.best_trial}; "
          f"{result.n_complete} finished, {result.n_pruned} pruned): {params}", flush=True)


def search_before_runs(prepared: PreparedExperiment, uri: str, args) -> PreparedExperiment | None:
    """Search (unless ``--skip-search``), then the experiment with the best parameters; None with ``--search-only``."""
    checked = prepared.checked
    plan = parse_search(checked.loaded.config.search, checked.strategies, checked.loaded.source,
                        any(t.valid_labels for t in checked.tasks))
    folder = search_folder(prepared)
    if not args.skip_search:
        run_tracked_search(prepared, plan, uri, on_result=_print_result)
        print(f"best parameters: {folder / BEST_PARAMS_FILE}", flush=True)
    if args.search_only:
        return None
    best = read_best_params(folder / BEST_PARAMS_FILE)
    if not best:
        return prepared
    if args.executor != "local" or args.workers != 1:
        raise ConfigError("the best parameters of a search are applied in this process only",
                          key="search", hint="run the final runs with --workers 1, or copy best_params.yaml's values into the strategies")
    tuned, skipped = apply_best(prepared, best)
    for item in skipped:
        print(f"note: per-strategy training value not applied to the final runs (one training config per grid): {item}",
              file=sys.stderr)
    return tuned


def search_report(args) -> int:
    """Print the best trials per strategy, parameter importances; write the optimisation-history plots, log them."""
    import optuna
    from mlflow import MlflowClient

    from cl_harness.report.compare import find_experiment
    from cl_harness.tracking.mlflow_logger import check_tracking_reachable, resolve_tracking_uri

    uri = resolve_tracking_uri(args.tracking_uri)
    check_tracking_reachable(uri)
    client = MlflowClient(tracking_uri=uri)
    experiment = find_experiment(client, args.experiment)
    parents = client.search_runs([experiment.experiment_id], f"tags.`{ROLE_TAG}` = '{SEARCH_ROLE}'",
                                 max_results=1, order_by=["attributes.start_time DESC"])
    if not parents:
        raise ConfigError(f"experiment {args.experiment!r} has no search run", key="experiment",
                          hint="give the experiment a `search:` block and run `cl-harness run EXPERIMENT.yaml --search-only`")
    parent = parents[0]
    storage = parent.data.tags.get("search_storage", "")
    out = Path(args.out) if args.out else Path("reports") / experiment.name / "search"
    out.mkdir(parents=True, exist_ok=True)
    trials = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'", max_results=5000)
    print(f"search run {parent.info.run_id} of {experiment.name!r}: {len(trials)} trial runs")
    by_strategy: dict[str, list] = {}
    for run in trials:
        if run.data.tags.get(ROLE_TAG) == TRIAL_ROLE:
            by_strategy.setdefault(run.data.tags.get("strategy", "?"), []).append(run)
    for label, runs in sorted(by_strategy.items()):
        done = sorted((r for r in runs if "valid_acc" in r.data.metrics), key=lambda r: -r.data.metrics["valid_acc"])
        print(f"\n{label}: {len(done)} finished, {sum(r.info.status == 'KILLED' for r in runs)} pruned")
        for run in done[:5]:
            params = {k.removeprefix("param."): v for k, v in run.data.tags.items() if k.startswith("param.")}
            print(f"  {run.info.run_name:<28} valid_acc {100 * run.data.metrics['valid_acc']:5.1f}%  {params}")
        if Path(storage).is_file():
            study = optuna.load_study(study_name=label, storage=f"sqlite:///{storage}")
            finished = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
            if len(finished) >= 2 and len(study.best_params) >= 1:
                try:
                    importances = optuna.importance.get_param_importances(study)
                    print("  importances: " + ", ".join(f"{k} {v:.2f}" for k, v in importances.items()))
                except (RuntimeError, ValueError) as exc:
                    print(f"  importances: not computable ({exc})")
            if finished:
                _history_plot(study, out / f"optimization_history_{label}.png")
                client.log_artifact(parent.info.run_id, str(out / f"optimization_history_{label}.png"), "search")
    print(f"\nplots: {out}")
    return 0


def _history_plot(study, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
        axes = optuna.visualization.matplotlib.plot_optimization_history(study)
    axes.figure.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(axes.figure)
