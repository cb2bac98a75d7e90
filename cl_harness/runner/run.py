"""Run an experiment: each (strategy, seed) trains task after task, scored on every task after every step."""

from __future__ import annotations

import random
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate
from tqdm.auto import tqdm

from cl_harness.data.benchmark import make_benchmark
from cl_harness.errors import TrainingError
from cl_harness.evaluation.evaluator import evaluate_all
from cl_harness.evaluation.metrics import acc, seen_average, summary
from cl_harness.models.backbone import check_tokenizer_matches, load_encoder
from cl_harness.models.classifier import TextClassifier
from cl_harness.runner.hooks import FiniteLossGuard, ProgressBar
from cl_harness.runner.prepare import PreparedExperiment
from cl_harness.strategies.registry import BuildContext, StrategySpec
from cl_harness.tracking.artifacts import accuracy_matrix_dict, plot_accuracy_matrix
from cl_harness.tracking.mlflow_logger import RunLogger, default_tags, metric_key


@dataclass
class RunResult:
    """The outcome of one (strategy, seed) run."""

    strategy: str
    seed: int
    tasks: list[str]
    initial: list[float]
    matrix: list[list[float]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    status: str = "RUNNING"
    error: str | None = None
    run_id: str | None = None
    wall_time_s: float = 0.0

    @property
    def run_name(self) -> str:
        return f"{self.strategy}/seed{self.seed}"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def step_metrics(tasks: list[str], row: list[float], step: int) -> dict[str, float]:
    """``acc/<task>`` for every task and ``acc/seen_avg``, for one evaluation step."""
    metrics = {metric_key(f"acc/{name}"): value for name, value in zip(tasks, row)}
    metrics["acc/seen_avg"] = seen_average(row, step)
    return metrics


def build_strategy(prepared: PreparedExperiment, spec: StrategySpec, model, device, show_progress: bool):
    """Avalanche's training template with the strategy's plugins and the framework's own."""
    checked = prepared.checked
    training = checked.loaded.config.training
    context = BuildContext(
        checked.scenario, len(checked.tasks), training.batch_size, training.eval_batch_size, device, model
    )
    plugins = [plugin for p in spec.plugins for plugin in p.build(context)]
    plugins += [FiniteLossGuard(spec.label, checked.task_names), ProgressBar(spec.label, show_progress)]
    optimizer = torch.optim.AdamW(model.parameters(), lr=training.lr, weight_decay=training.weight_decay)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No loggers specified": the harness logs to MLflow itself
        evaluator = EvaluationPlugin(loggers=[])
    return SupervisedTemplate(
        model=model,
        optimizer=optimizer,
        criterion=torch.nn.CrossEntropyLoss(),
        train_mb_size=training.batch_size,
        train_epochs=training.epochs,
        eval_mb_size=training.eval_batch_size,
        device=device,
        plugins=plugins,
        evaluator=evaluator,
    )


def experiences_to_train(benchmark, mode: str) -> list[tuple[int, object]]:
    """(step, experience) pairs the base loop trains on, by the strategy's training-data mode.

    ``current``: task i at step i. ``cumulative``: tasks 1..i merged at step i. ``joint``: all
    tasks merged, trained once, at step T.
    """
    stream = list(benchmark.train_stream)
    if mode == "current":
        return [(index + 1, exp) for index, exp in enumerate(stream)]
    if mode == "cumulative":
        return [(index + 1, merge_experiences(stream[: index + 1])) for index in range(len(stream))]
    return [(len(stream), merge_experiences(stream))]


def merge_experiences(experiences: list) -> object:
    """One experience holding the data of several, numbered as the last of them."""
    from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience
    from avalanche.benchmarks.utils import _concat_taskaware_classification_datasets

    merged = _concat_taskaware_classification_datasets([e.dataset for e in experiences])
    experience = DatasetExperience(dataset=merged, current_experience=experiences[-1].current_experience)
    experience.origin_stream = experiences[-1].origin_stream
    experience.task_labels = sorted(merged.targets_task_labels.uniques)
    return experience


def final_metrics(matrix: list[list[float]], initial: list[float], mode: str) -> dict[str, float]:
    """The summary metrics; a joint run has one row, so only its final ``acc`` is defined."""
    if mode == "joint":
        return {"acc": acc(np.array(matrix))}
    return summary(np.array(matrix), np.array(initial))


class Evaluation:
    """Scores the model on every task's test set, with a progress bar over examples."""

    def __init__(self, prepared: PreparedExperiment, device: torch.device, show_progress: bool) -> None:
        self.test_sets = [(t.test_inputs, t.test_targets) for t in prepared.encoded]
        self.batch_size = prepared.checked.loaded.config.training.eval_batch_size
        self.device = device
        self.show_progress = show_progress
        self.total = sum(len(targets) for _, targets in self.test_sets)

    def __call__(self, model, step: int) -> list[float]:
        with tqdm(total=self.total, desc=f"evaluate step {step}", unit="ex", leave=False, disable=not self.show_progress) as bar:
            return evaluate_all(model, self.test_sets, self.batch_size, self.device, bar.update)


def train_and_evaluate(
    prepared: PreparedExperiment,
    spec: StrategySpec,
    seed: int,
    logger: RunLogger | None = None,
    show_progress: bool = True,
    keep_strategy: bool = False,
):
    """One run: the untrained baseline, then train each task and evaluate all tasks after it.

    Returns the RunResult, or ``(result, strategy)`` with ``keep_strategy`` (for inspecting plugins).
    """
    checked = prepared.checked
    config = checked.loaded.config
    device = resolve_device(config.training.device)
    seed_everything(seed)
    encoder = load_encoder(config.backbone)
    check_tokenizer_matches(checked.tokenizer, encoder, config.backbone.name)
    model = TextClassifier(encoder, checked.space.head_sizes, checked.scenario, config.backbone.pooling).to(device)
    strategy = build_strategy(prepared, spec, model, device, show_progress)
    evaluate = Evaluation(prepared, device, show_progress)
    tasks = checked.task_names

    started = time.perf_counter()
    initial = evaluate(model, 0)
    result = RunResult(spec.label, seed, tasks, initial, run_id=logger.run_id if logger else None)
    if logger:
        logger.log_step(0, step_metrics(tasks, initial, 0))
    benchmark = make_benchmark(prepared.encoded)
    try:
        for step, experience in experiences_to_train(benchmark, spec.train_data):
            strategy.train(experience, num_workers=0)
            row = evaluate(model, step)
            result.matrix.append(row)
            if logger:
                logger.log_step(step, step_metrics(tasks, row, step))
    except TrainingError as exc:  # the partial matrix is kept and logged
        result.status, result.error = "FAILED", str(exc)
    else:
        result.status = "FINISHED"
    result.wall_time_s = time.perf_counter() - started
    if result.matrix:
        result.metrics = final_metrics(result.matrix, initial, spec.train_data)
    return (result, strategy) if keep_strategy else result


def log_results(logger: RunLogger, result: RunResult) -> None:
    """Final metrics and the accuracy-matrix artifacts (also for a partial matrix)."""
    if result.metrics:
        logger.log_final({**result.metrics, "wall_time_s": result.wall_time_s})
    logger.log_dict(accuracy_matrix_dict(result.tasks, result.initial, result.matrix), "accuracy_matrix.json")
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "accuracy_matrix.png"
        plot_accuracy_matrix(result.tasks, result.initial, result.matrix, png, title=result.run_name)
        logger.log_artifact(png)


def run_one(prepared: PreparedExperiment, spec: StrategySpec, seed: int, client, experiment_id: str, show_progress: bool) -> RunResult:
    """One tracked run: a failure in training marks it FAILED, with the partial matrix logged."""
    checked = prepared.checked
    tags = {
        **default_tags(None),
        "strategy": spec.label,
        "seed": str(seed),
        "stream": checked.loaded.stream.config.name,
        "scenario": checked.scenario,
        "backbone": checked.loaded.config.backbone.name,
    }
    logger = RunLogger(client, experiment_id, f"{spec.label}/seed{seed}", tags=tags)
    config = checked.resolved_config()
    config["run"] = {"strategy": spec.as_dict(), "seed": seed}
    logger.log_config(config)
    try:
        result = train_and_evaluate(prepared, spec, seed, logger, show_progress)
    except KeyboardInterrupt:
        logger.end("KILLED")
        raise
    except BaseException:
        logger.end("FAILED")
        raise
    log_results(logger, result)
    if result.error:
        logger.set_tags({"error": result.error[:4000]})
    logger.end(result.status)
    return result


def run_experiment(prepared: PreparedExperiment, tracking_uri: str | None = None, show_progress: bool = True, on_result=None) -> list[RunResult]:
    """Every (strategy, seed) of the experiment, one MLflow run each, in one MLflow experiment."""
    from mlflow import MlflowClient

    from cl_harness.tracking.mlflow_logger import (
        check_tracking_reachable,
        default_artifact_location,
        get_or_create_experiment,
        resolve_tracking_uri,
    )

    config = prepared.checked.loaded.config
    uri = resolve_tracking_uri(tracking_uri or config.tracking.uri)
    check_tracking_reachable(uri)
    name = config.tracking.experiment or config.name
    client = MlflowClient(tracking_uri=uri)
    experiment_id = get_or_create_experiment(client, name, default_artifact_location(uri, name))
    results = []
    for spec in prepared.checked.strategies:
        for seed in config.seeds:
            result = run_one(prepared, spec, seed, client, experiment_id, show_progress)
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results
