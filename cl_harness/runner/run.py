"""One run: a strategy trains task after task in a given order, scored on every task after every step."""

from __future__ import annotations

import random
import resource
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate
from tqdm.auto import tqdm

from cl_harness.data.benchmark import EncodedTask, make_benchmark
from cl_harness.errors import TrainingError
from cl_harness.evaluation.evaluator import task_correct
from cl_harness.evaluation.flips import flip_metrics, pack_correct, summary_flip_rate
from cl_harness.evaluation.validation import VALID_ACC_METRIC, final_valid_acc, valid_step_metrics
from cl_harness.evaluation.metrics import acc, seen_average, summary
from cl_harness.models.backbone import load_encoder
from cl_harness.models.classifier import TextClassifier
from cl_harness.models.masked_lm import MaskedLMHead, MaskingSpec, masked_token_accuracy, pseudo_perplexity, train_masked_lm
from cl_harness.models.peft_backbone import apply_peft
from cl_harness.runner.checkpoint import CHECKPOINT_FILE, RunState, load_checkpoint, load_state, restore_rng_states, save_checkpoint, save_state
from cl_harness.runner.grid import PlannedRun
from cl_harness.runner.hooks import FiniteLossGuard, LengthBucketing, ProgressBar, RestoreOptimizerState, TrainingMeter
from cl_harness.runner.loss_scaling import DynamicLossScale, LossScaling
from cl_harness.runner.optimizer import build_optimizer
from cl_harness.runner.prepare import PreparedExperiment
from cl_harness.strategies.registry import BuildContext, StrategySpec
from cl_harness.tracking.mlflow_logger import RunLogger, metric_key


@dataclass
class RunResult:
    """The outcome of one run of the grid."""

    strategy: str
    seed: int
    tasks: list[str]  # in this run's training order
    initial: list[float]
    order_index: int = 0
    matrix: list[list[float]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    status: str = "RUNNING"
    error: str | None = None
    run_id: str | None = None
    wall_time_s: float = 0.0
    note: str | None = None  # e.g. "resumed after task 2" or "already finished: skipped"
    column_metrics: list[str] | None = None  # per task: accuracy | masked_token_accuracy
    valid_initial: list[float] = field(default_factory=list)  # validation matrix (empty without validation splits)
    valid_matrix: list[list[float]] = field(default_factory=list)

    @property
    def run_name(self) -> str:
        return f"{self.strategy}/seed{self.seed}/order{self.order_index}"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def reset_peak_memory(device: torch.device) -> None:
    """Start a run's peak-memory count: CUDA's allocator peak, or Linux's peak RSS (``/proc/self/clear_refs``)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # not Linux: the process-wide peak is reported


def _proc_status_mb(field: str) -> float | None:
    """A memory line of ``/proc/self/status`` (``VmHWM``, ``VmRSS``) in MiB; None where there is none (not Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) / 2**10  # kB
    except OSError:
        pass
    return None


def peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory allocated on CUDA; else the peak resident memory since ``reset_peak_memory``."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def current_memory_mb(device: torch.device) -> float:
    """GPU memory allocated now on CUDA; else the resident memory now (0 where it cannot be read)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    return _proc_status_mb("VmRSS") or 0.0


def step_metrics(tasks: list[str], row: list[float], step: int) -> dict[str, float]:
    """``acc/<task>`` for every task and ``acc/seen_avg``, for one evaluation step."""
    metrics = {metric_key(f"acc/{name}"): value for name, value in zip(tasks, row)}
    metrics["acc/seen_avg"] = seen_average(row, step)
    return metrics


def build_context(prepared: PreparedExperiment, model, device) -> BuildContext:
    checked = prepared.checked
    training = checked.loaded.config.training
    return BuildContext(checked.scenario, len(checked.tasks), training.batch_size, training.eval_batch_size, device, model)


def build_model(prepared: PreparedExperiment, spec: StrategySpec, device) -> TextClassifier:
    """Encoder + heads, with the backbone's PEFT method or the strategy's own adapters applied (same for a resumed run)."""
    checked = prepared.checked
    config = checked.loaded.config
    model = TextClassifier(
        load_encoder(config.backbone), checked.space.head_sizes, checked.scenario, config.backbone.pooling, config.training.precision
    )
    apply_peft(model, config.backbone.peft)
    if checked.has_mlm:  # before the adapters, so that the head ties to the plain embedding table
        model.mlm_head = MaskedLMHead(model.encoder.get_input_embeddings(), model.encoder.config.hidden_size)
    context = build_context(prepared, model, device)
    for plugin in spec.plugins:
        plugin.prepare_model(model, context)
    return model.to(device)


def build_plugins(prepared: PreparedExperiment, spec: StrategySpec, model, device) -> list:
    """The strategy's own plugins (what a checkpoint saves)."""
    context = build_context(prepared, model, device)
    return [plugin for p in spec.plugins for plugin in p.build(context)]


def build_strategy(prepared: PreparedExperiment, spec: StrategySpec, model, device, tasks, strategy_plugins, extra_plugins, show_progress):
    """Avalanche's training template with the strategy's plugins and the framework's own."""
    training = prepared.checked.loaded.config.training
    plugins = [*strategy_plugins, FiniteLossGuard(spec.label, tasks), ProgressBar(spec.label, show_progress), *extra_plugins]
    optimizer = build_optimizer(model, training.lr, training.weight_decay)
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
    """Scores the model on every task's test set, in training order, with a progress bar over examples.

    A classification task's column holds its accuracy; an mlm task's its masked-token accuracy (fixed masking),
    and its pseudo-perplexity goes to ``extra`` as ``pppl/<task>``.
    """

    def __init__(self, tasks: list[EncodedTask], batch_size: int, device: torch.device, show_progress: bool, masking: MaskingSpec | None = None,
                 split: str = "test") -> None:
        self.tasks = tasks
        self.split = split  # test | valid (tasks without a validation split score NaN there)
        self.batch_size = batch_size
        self.device = device
        self.show_progress = show_progress
        self.masking = masking
        self.total = sum(len(targets) for _, targets in map(self.data, tasks) if targets is not None)
        self.extra: dict[str, float] = {}
        self.correct: list[str | None] = []  # per task: packed per-example correctness of the last call (None: mlm)

    def data(self, task: EncodedTask) -> tuple:
        """The task's ``(inputs, targets)`` of the evaluated split (``(None, None)`` when it has none)."""
        return (task.test_inputs, task.test_targets) if self.split == "test" else (task.valid_inputs, task.valid_targets)

    def __call__(self, model, step: int) -> list[float]:
        row, self.extra, self.correct = [], {}, []
        with tqdm(total=self.total, desc=f"evaluate step {step}", unit="ex", leave=False, disable=not self.show_progress) as bar:
            for task in self.tasks:
                inputs, targets = self.data(task)
                if targets is None:
                    row.append(float("nan"))
                    self.correct.append(None)
                elif task.kind == "mlm":
                    row.append(masked_token_accuracy(model, task.test_inputs, self.masking, self.batch_size, self.device, seed=task.index))
                    ppl = pseudo_perplexity(model, task.test_inputs, self.masking, self.batch_size, self.device)
                    self.extra[metric_key(f"pppl/{task.name}")] = ppl
                    bar.update(len(task.test_targets))
                    self.correct.append(None)
                else:
                    hits = task_correct(model, inputs, targets, task.index, self.batch_size, self.device, bar.update)
                    row.append(int(hits.sum()) / len(hits) if len(hits) else float("nan"))
                    self.correct.append(pack_correct(hits.numpy()))
        return row

    def sizes(self) -> list[int]:
        """The number of test examples of each task, in training order."""
        return [len(t.test_targets) for t in self.tasks]


def column_metrics(tasks: list[EncodedTask]) -> list[str]:
    """What each accuracy-matrix column holds, in training order."""
    return ["masked_token_accuracy" if t.kind == "mlm" else "accuracy" for t in tasks]


def train_mlm_task(model, strategy, task: EncodedTask, masking: MaskingSpec, training, meter: TrainingMeter, device, loss_scale) -> None:
    """Masked-LM training of one task outside the Avalanche loop (strategy plugins do not act on it)."""
    started = time.perf_counter()
    try:
        train_masked_lm(model, strategy.optimizer, task.train_inputs, masking, training.epochs, training.batch_size, device, loss_scale)
    except FloatingPointError as exc:
        raise TrainingError(f"task {task.name!r}: {exc}") from None
    meter.task_seconds = time.perf_counter() - started
    meter.seconds += meter.task_seconds
    meter.examples += training.epochs * len(task.train_inputs)


def train_and_evaluate(
    prepared: PreparedExperiment,
    planned: PlannedRun,
    logger: RunLogger | None = None,
    show_progress: bool = True,
    keep_strategy: bool = False,
    folder: Path | None = None,
):
    """The untrained baseline, then train each task in the run's order and evaluate all tasks after it.

    With a run ``folder``, a checkpoint is written after every task and a run found there unfinished
    continues after its last finished task, logging only the steps MLflow does not hold yet.
    Returns the RunResult, or ``(result, strategy)`` with ``keep_strategy`` (for inspecting plugins).
    """
    checked = prepared.checked
    config = checked.loaded.config
    spec = planned.strategy
    device = resolve_device(config.training.device)
    ordered = [prepared.encoded[i] for i in planned.order]
    tasks = [t.name for t in ordered]
    state = (load_state(folder) if folder else None) or RunState(run_id=logger.run_id if logger else None)
    state.tasks = tasks
    checkpoint = load_checkpoint(folder) if folder and state.steps_done else None

    seed_everything(planned.seed)
    reset_peak_memory(device)
    model = build_model(prepared, spec, device)
    model_memory_mb = current_memory_mb(device)  # the loaded model and data: what training adds comes on top
    strategy_plugins = checkpoint["plugins"] if checkpoint else build_plugins(prepared, spec, model, device)
    meter = TrainingMeter()
    framework = [meter, RestoreOptimizerState(checkpoint["optimizer"])] if checkpoint else [meter]
    if config.training.length_bucketing:
        framework.append(LengthBucketing())
    loss_scale = DynamicLossScale() if config.training.precision == "fp16" else None
    if loss_scale:
        if checkpoint and checkpoint.get("loss_scale"):
            loss_scale.load_state_dict(checkpoint["loss_scale"])
        framework.append(LossScaling(loss_scale))  # last: after every plugin's penalty, before every update
    strategy = build_strategy(prepared, spec, model, device, tasks, strategy_plugins, framework, show_progress)
    masking = checked.masking()
    evaluate = Evaluation(ordered, config.training.eval_batch_size, device, show_progress, masking)
    has_valid = any(t.valid_targets is not None for t in ordered)
    validate = Evaluation(ordered, config.training.eval_batch_size, device, show_progress, masking, split="valid") if has_valid else None

    def valid_row(step: int) -> list[float] | None:
        rows = [state.valid_initial, *state.valid_matrix] if has_valid else []
        return rows[step] if step < len(rows) and rows[step] else None
    logged = logger.logged_steps("acc/seen_avg") if logger else set()  # a run stopped before its first checkpoint has step 0 already

    def log_step(step: int, row: list[float], extra: dict) -> None:
        if logger and step not in logged:
            logger.log_step(step, {**step_metrics(tasks, row, step), **flip_metrics(state.correct, evaluate.sizes(), step),
                                   **valid_step_metrics(tasks, valid_row(step), step, metric_key), **extra})

    started = time.perf_counter()
    tasks_trained = 0
    if checkpoint:
        model.load_state_dict(checkpoint["model"])
        strategy.clock.__dict__.update(checkpoint["clock"])
        restore_rng_states(checkpoint["rng"])
        state.matrix = state.matrix[: checkpoint["step"]]
        state.correct = state.correct[: checkpoint["step"] + 1]
        state.valid_matrix = state.valid_matrix[: checkpoint["step"]]
        state.steps_done = checkpoint["step"]
        resumed_note = f"resumed after task {state.steps_done} from {folder}"
    else:
        resumed_note = None
        state.initial, state.matrix, state.steps_done = evaluate(model, 0), [], 0
        state.correct = [evaluate.correct]
        state.valid_initial = validate(model, 0) if validate else []
        if folder:
            save_state(folder, state)
    log_step(0, state.initial, dict(evaluate.extra))
    for step, row in enumerate(state.matrix, start=1):  # steps a crash may have left unlogged
        log_step(step, row, {})

    result = RunResult(
        spec.label, planned.seed, tasks, state.initial, planned.order_index, state.matrix, run_id=state.run_id, note=resumed_note,
        column_metrics=column_metrics(ordered), valid_initial=state.valid_initial, valid_matrix=state.valid_matrix,
    )
    try:
        for step, experience in experiences_to_train(make_benchmark(ordered), spec.train_data):
            if step <= state.steps_done:
                continue
            if ordered[step - 1].kind == "mlm":  # mlm tasks are refused with joint/cumulative data: step is the task
                train_mlm_task(model, strategy, ordered[step - 1], masking, config.training, meter, device, loss_scale)
            else:
                strategy.train(experience, num_workers=0)
            tasks_trained += 1
            row = evaluate(model, step)
            result.matrix.append(row)
            state.correct.append(evaluate.correct)
            if validate:
                state.valid_matrix.append(validate(model, step))
            if folder:
                save_checkpoint(folder, step, model, strategy.optimizer, strategy_plugins, strategy.clock, loss_scale)
                state.steps_done = step
                save_state(folder, state)
            log_step(step, row, {"train_time_s": meter.task_seconds, "trainable_params": float(model.trainable_parameters()), **evaluate.extra})
    except TrainingError as exc:  # the partial matrix is kept and logged
        result.status, result.error = "FAILED", str(exc)
    else:
        result.status = "FINISHED"
    result.wall_time_s = time.perf_counter() - started
    if result.matrix:
        result.metrics = final_metrics(result.matrix, result.initial, spec.train_data)
        if spec.train_data != "joint":
            result.metrics.update(summary_flip_rate(state.correct, evaluate.sizes()))
        if final_valid_acc(state.valid_matrix) is not None:
            result.metrics[VALID_ACC_METRIC] = final_valid_acc(state.valid_matrix)
    result.metrics.update(
        wall_time_s=result.wall_time_s,
        train_examples_per_s=meter.examples_per_second,
        peak_memory_mb=peak_memory_mb(device),
        extra_memory_mb=max(peak_memory_mb(device) - model_memory_mb, 0.0),
        train_time_per_task_s=meter.seconds / tasks_trained if tasks_trained else 0.0,
        trainable_params=float(model.trainable_parameters()),
        total_params=float(sum(p.numel() for p in model.parameters())),
    )
    if loss_scale:
        result.metrics["fp16_skipped_steps"] = float(loss_scale.skipped_steps)
    if folder:
        state.status, state.metrics, state.error = result.status, result.metrics, result.error
        save_state(folder, state)
        if result.status == "FINISHED":  # its results live in state.json and MLflow; the weights are not needed again
            (folder / CHECKPOINT_FILE).unlink(missing_ok=True)
    return (result, strategy) if keep_strategy else result
