"""One run: a strategy trains task after task in a given order, scored on every task after every step."""

from __future__ import annotations

import random
import resource
import sys
import time
import warnings
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate

from cl_harness.config.experiment import BackboneConfig, TrainingConfig
from cl_harness.data.benchmark import EncodedTask, make_benchmark
from cl_harness.errors import TrainingError
from cl_harness.evaluation.evaluator import Evaluator
from cl_harness.evaluation.flips import step_flip_rate, summary_flip_rate
from cl_harness.evaluation.validation import defined_cells, final_valid_acc, seen_valid_average
from cl_harness.evaluation.metrics import acc, seen_average, summary
from cl_harness.models.backbone import load_encoder
from cl_harness.models.classifier import TextClassifier
from cl_harness.models.peft_backbone import apply_peft
from cl_harness.runner.checkpoint import (
    STATE_FILE,
    PendingCheckpoint,
    RunState,
    check_checkpoint_files,
    check_same_data,
    data_fingerprints,
    load_checkpoint,
    load_model_state,
    load_state,
    remove_checkpoints,
    restore_rng_states,
    save_state,
    start_checkpoint,
)
from cl_harness.runner.hooks import AddedLossShare, FiniteLossGuard, LengthBucketing, ProgressBar, RestoreOptimizerState, TrainingMeter
from cl_harness.runner.loss_scaling import DynamicLossScale, LossScaling
from cl_harness.runner.optimizer import build_optimizer
from cl_harness.runner.probing import LinearProbing
from cl_harness.runner.prefix import PREFIX_TASKS, SharedPrefix, at_training_end, fork_prefix, save_prefix
from cl_harness.runner.quiet import known_warnings_silenced
from cl_harness.strategies.registry import BuildContext, StrategySpec
from cl_harness.tasks.registry import KindEnv, TaskKindRegistry, TrainStep
from cl_harness.tracking import schema
from cl_harness.tracking.writer import RunLogger


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
        return schema.run_name(self.strategy, self.seed, self.order_index)


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
    metrics = {schema.task_acc_metric(name): value for name, value in zip(tasks, row)}
    metrics[schema.SEEN_AVG_METRIC] = seen_average(row, step)
    return metrics


@dataclass
class ModelFactory:
    """Builds a run's model: the encoder with its heads, the backbone's PEFT method, and what the task kinds add."""

    backbone: BackboneConfig
    head_sizes: list[int]
    scenario: str
    precision: str = "fp32"
    kind_modules: list[tuple[Any, Any]] = field(default_factory=list)  # (kind.prepare_model, its resources)
    head_init: Any = None  # model -> None: head rows set before PEFT (backbone.head_init: label_names)

    def __call__(self) -> TextClassifier:
        model = TextClassifier(load_encoder(self.backbone), self.head_sizes, self.scenario, self.backbone.pooling, self.precision)
        if self.head_init is not None:  # before PEFT: the plain backbone embeds the label names
            self.head_init(model)
        apply_peft(model, self.backbone.peft)
        for prepare_model, resources in self.kind_modules:  # before a strategy's adapters: an MLM head ties to the plain embeddings
            prepare_model(model, resources)
        return model


@dataclass
class RunPlan:
    """What one run needs: its strategy, seed, tasks in training order, model factory and training settings."""

    strategy: StrategySpec
    seed: int
    order_index: int
    tasks: list[EncodedTask]  # in training order
    model_factory: Any  # ModelFactory, or models.generative.GenerativeModelFactory
    training: TrainingConfig
    scenario: str
    kinds: TaskKindRegistry
    resources: Mapping[str, Any] = field(default_factory=dict)  # per task kind: what it needs from the tokenizer
    position: str = ""  # "2/9": the run's place in its grid, for progress bars
    prefix: SharedPrefix | None = None  # task 1 shared with the grid's other runs (runner/prefix.py)
    checkpoint_every_s: float = 0.0  # with a run folder: checkpoint after a task once this long since the last one (0: every task)

    @property
    def label(self) -> str:
        """``run 2/9: replay/seed0/order0``: the run's position in its grid and its name."""
        return f"run {self.position}: {self.name}" if self.position else self.name

    @property
    def name(self) -> str:
        return schema.run_name(self.strategy.label, self.seed, self.order_index)

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @cached_property
    def data_sha256(self) -> dict[str, str]:
        """Per task, the sha256 of its tokenised splits (``data_fingerprints``), hashed once per plan."""
        return data_fingerprints(self.tasks)

    def context(self, model, device) -> BuildContext:
        """What the strategy's builders may read."""
        return BuildContext(self.scenario, len(self.tasks), self.training.batch_size, self.training.eval_batch_size, device, model)

    def kind_env(self, device, loss_scale=None) -> KindEnv:
        """What the task kinds' training and scoring may read."""
        t = self.training
        return KindEnv(device, t.batch_size, t.eval_batch_size, t.epochs, dict(self.resources), loss_scale,
                       demonstrations=self.strategy.demonstrations is not None)


def build_model(plan: RunPlan, device) -> TextClassifier:
    """The plan's model, with the strategy's own adapters applied (same for a resumed run)."""
    model = plan.model_factory()
    context = plan.context(model, device)
    for plugin in plan.strategy.plugins:
        plugin.prepare_model(model, context)
    return model.to(device)


def build_plugins(plan: RunPlan, model, device) -> list:
    """The strategy's own plugins (what a checkpoint saves)."""
    context = plan.context(model, device)
    return [plugin for p in plan.strategy.plugins for plugin in p.build(context)]


def build_strategy(plan: RunPlan, model, device, strategy_plugins, extra_plugins, show_progress):
    """Avalanche's training template with the strategy's plugins and the framework's own."""
    training, label = plan.training, plan.strategy.label
    bar = ProgressBar(plan.label, show_progress, task_names=plan.task_names, train_data=plan.strategy.train_data)
    plugins = [*strategy_plugins, FiniteLossGuard(label, plan.task_names), bar, *extra_plugins]
    optimizer = build_optimizer(model, training.lr, training.weight_decay)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "No loggers specified": the harness logs to MLflow itself
        evaluator = EvaluationPlugin(loggers=[])
    return SupervisedTemplate(
        model=model,
        optimizer=optimizer,
        criterion=model.criterion(),  # the backbone kind's loss: class cross-entropy, or the LM loss on answer tokens
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
    if mode == "none":  # zero_shot, in_context: nothing is trained
        return []
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
    if mode in ("joint", "none"):
        return {"acc": acc(np.array(matrix))}
    return summary(np.array(matrix), np.array(initial))


class TrainingRun:
    """One run: the untrained baseline, then each task in the plan's order, every task scored after every step.

    With a run ``folder``, a checkpoint is written after a task (but the last) once ``plan.checkpoint_every_s`` have
    passed since the previous one, and a run found there unfinished continues after its last checkpointed task,
    logging only the steps the ``logger``'s run does not hold yet.
    After ``execute``, ``model`` and ``strategy`` (the Avalanche template with its plugins) stay inspectable.
    """

    def __init__(self, plan: RunPlan, logger: RunLogger | None = None, show_progress: bool = True, folder: Path | None = None) -> None:
        self.plan = plan
        self.logger = logger
        self.show_progress = show_progress
        self.folder = folder
        self.device = resolve_device(plan.training.device)
        self.model = None
        self.strategy = None
        self.tasks_trained = 0
        self.fork: dict | None = None  # the shared prefix's saved state, when this run starts from it
        self.prefix_state: RunState | None = None  # that prefix's state.json (its step-0 and step-1 scores), read once
        self.prefix_seconds = 0.0  # a prefix run: the seconds of task 1's epochs it saved
        self.last_checkpoint = 0.0  # perf_counter() at the last checkpoint, or where training started in this process
        self.probe: LinearProbing | None = None  # training.probe: the linear probes, made once the run's state is known

    def execute(self) -> RunResult:
        """Train and score the run; a TrainingError ends it FAILED with its partial matrix."""
        plan, folder = self.plan, self.folder
        state = (load_state(folder, plan.task_names) if folder else None) or RunState(run_id=self.logger.run_id if self.logger else None)
        if folder:  # a damaged folder or edited data are refused here, before any training
            check_checkpoint_files(folder)
            check_same_data(state, plan.data_sha256, folder / STATE_FILE)
        state.tasks = plan.task_names
        if folder or plan.prefix is not None:  # a state that is saved keeps its data's fingerprint
            state.data_sha256 = plan.data_sha256
        checkpoint = load_checkpoint(folder, len(state.matrix)) if folder and state.steps_done else None
        forking = plan.prefix is not None and not plan.prefix.save and not checkpoint and not state.steps_done
        if forking:
            self.fork = plan.prefix.saved or load_checkpoint(plan.prefix.folder)
            plan.prefix = replace(plan.prefix, saved=None)  # self.fork holds it until task 1 is forked, then lets it go
        seed_everything(plan.seed)
        reset_peak_memory(self.device)
        self._build(checkpoint)
        self.logged = self.logger.logged_steps(schema.SEEN_AVG_METRIC) if self.logger else set()  # a run stopped before its first checkpoint has step 0 already
        started = time.perf_counter()
        note = self._start(state, checkpoint)
        result = RunResult(
            plan.strategy.label, plan.seed, plan.task_names, state.initial, plan.order_index, state.matrix, run_id=state.run_id,
            note=note, column_metrics=plan.kinds.column_metrics(plan.tasks),
            valid_initial=state.valid_initial, valid_matrix=state.valid_matrix,
        )
        try:
            self._train(state, result)
        except TrainingError as exc:  # the partial matrix is kept and logged
            result.status, result.error = "FAILED", str(exc)
        else:
            result.status = "FINISHED"
        if plan.strategy.train_data == "none":  # zero_shot: the one row is the untrained model's, logged as the last step
            result.matrix.append(list(state.initial))  # state.matrix too: a finished run read back has its row
            self._log_step(len(plan.tasks), state.initial, {})
        result.wall_time_s = time.perf_counter() - started
        result.metrics = self._metrics(result, self.tasks_trained)
        self._save_outcome(state, result)
        return result

    def _build(self, checkpoint: dict | None) -> None:
        """The model, the strategy's plugins (restored from ``checkpoint``) and the Avalanche template around them."""
        plan, device = self.plan, self.device
        self.model = build_model(plan, device)
        self.model_memory_mb = current_memory_mb(device)  # the loaded model and data: what training adds comes on top
        self.plugins = checkpoint["plugins"] if checkpoint else build_plugins(plan, self.model, device)
        self.meter, self.loss_share = TrainingMeter(), AddedLossShare(plan.strategy, plan.task_names, self.logger)
        framework = [self.meter, self.loss_share, *([RestoreOptimizerState(checkpoint["optimizer"])] if checkpoint else [])]
        if plan.training.length_bucketing:
            framework.append(LengthBucketing())
        self.loss_scale = DynamicLossScale() if plan.training.precision == "fp16" else None
        if self.loss_scale:
            if checkpoint and checkpoint.get("loss_scale"):
                self.loss_scale.load_state_dict(checkpoint["loss_scale"])
            framework.append(LossScaling(self.loss_scale))  # last: after every plugin's penalty, before every update
        self.strategy = build_strategy(plan, self.model, device, self.plugins, framework, self.show_progress)
        if checkpoint:
            load_model_state(self.model, checkpoint["model"], self.folder)
            self.strategy.clock.__dict__.update(checkpoint["clock"])
            restore_rng_states(checkpoint["rng"])
        self.env = plan.kind_env(device, self.loss_scale)
        self.evaluate = Evaluator(plan.tasks, plan.kinds, self.env, self.show_progress, describe=plan.label)
        has_valid = any(t.valid_targets is not None for t in plan.tasks)
        self.validate = Evaluator(plan.tasks, plan.kinds, self.env, self.show_progress, plan.label, split="valid") if has_valid else None

    def _log_step(self, step: int, row: list[float], extra: dict) -> None:
        if self.logger and step not in self.logged:
            metrics = {**step_metrics(self.plan.task_names, row, step), **self._flip_and_valid(step), **extra}
            if self.probe:
                metrics.update(self.probe.step_metrics(step))
            self.logger.log_step(step, metrics)

    def _flip_and_valid(self, step: int) -> dict[str, float]:
        """The step's negative flip rate and validation accuracies, from the run state (empty where undefined)."""
        state, metrics = self.state, {}
        rate = step_flip_rate(state.correct, self.evaluate.sizes(), step)
        if rate is not None:
            metrics[schema.NFR_STEP_METRIC] = rate
        rows = [state.valid_initial, *state.valid_matrix] if self.validate else []
        row = rows[step] if step < len(rows) and rows[step] else None
        if row is not None:
            metrics.update({schema.metric_key(schema.valid_acc_metric(t)): v for t, v in defined_cells(self.plan.task_names, row).items()})
            seen = seen_valid_average(row, step)
            if seen is not None:
                metrics[schema.VALID_SEEN_AVG_METRIC] = seen
        return metrics

    def _extra(self) -> dict[str, float]:
        """The evaluator's extra per-task metrics of the last step, as store keys."""
        return {schema.metric_key(name): value for name, value in self.evaluate.extra.items()}

    def _start(self, state: RunState, checkpoint: dict | None) -> str | None:
        """The baseline (step 0) scored, or the checkpoint's steps taken over; steps a crash left unlogged are logged."""
        self.state = state
        if checkpoint:
            state.matrix = state.matrix[: checkpoint["step"]]
            state.correct = state.correct[: checkpoint["step"] + 1]
            state.valid_matrix = state.valid_matrix[: checkpoint["step"]]
            state.probe_rows = {step: row for step, row in state.probe_rows.items() if step <= checkpoint["step"]}
            state.steps_done = checkpoint["step"]
            note = f"resumed after task {state.steps_done} from {self.folder}"
            scored = {}
            self.probe = self._probing(state)
        else:
            scoring = time.perf_counter()
            note = self._step_0(state)
            state.probe_rows = {}
            self.probe = self._probing(state)
            if self.probe:
                self.probe(self.model, 0)
            scored = {schema.EVAL_TIME_METRIC: time.perf_counter() - scoring}
            state.matrix, state.valid_matrix, state.steps_done = [], [], 0
            if self.folder:
                save_state(self.folder, state)
        self._log_step(0, state.initial, {**self._extra(), **scored})
        for step, row in enumerate(state.matrix, start=1):
            self._log_step(step, row, {})
        return note

    def _probing(self, state: RunState) -> LinearProbing | None:
        """The run's linear probes (``training.probe``), their rows kept in ``state``; None without probing."""
        plan = self.plan
        if not plan.training.probe:
            return None
        probed = [plan.kinds.get(task.kind).labelled for task in plan.tasks]
        return LinearProbing(plan.tasks, probed, self.env, state.probe_rows, self.folder)

    def _step_0(self, state: RunState) -> str | None:
        """The untrained model scored; a fork takes the scores from its shared prefix, which scored the same model."""
        if not self.fork:
            with known_warnings_silenced():
                state.initial = self.evaluate(self.model, 0)
                state.correct = [self.evaluate.correct]
                state.valid_initial = self.validate(self.model, 0) if self.validate else []
            return None
        shared = self.prefix_state = load_state(self.plan.prefix.folder)
        check_same_data(shared, self.plan.data_sha256, self.plan.prefix.folder / STATE_FILE)  # a prefix of the data as it was
        state.initial, state.correct, state.valid_initial = shared.initial, shared.correct[:1], shared.valid_initial
        state.train_time_saved_s = shared.metrics[schema.TRAIN_TIME_METRIC]
        if self.logger:
            self.logger.set_tags({schema.SHARED_PREFIX_TASKS_TAG: str(PREFIX_TASKS)})
        return f"task 1 forked from the shared prefix in {self.plan.prefix.folder}"

    def _train(self, state: RunState, result: RunResult) -> None:
        """Every step not done yet: train, score, checkpoint, log (``tasks_trained`` counts the tasks trained here)."""
        plan = self.plan
        steps = experiences_to_train(make_benchmark(plan.tasks), plan.strategy.train_data)
        last_step = steps[-1][0] if steps else 0
        self.last_checkpoint = time.perf_counter()  # or this process's start on it: what a crash now would lose begins here
        for step, experience in steps:
            if step <= state.steps_done:
                continue
            task = plan.tasks[step - 1]  # joint/cumulative data is refused with kinds trained outside the loop
            with known_warnings_silenced(), self._at_prefix_end(step):
                plan.kinds.get(task.kind).train(TrainStep(self.model, self.strategy, task, experience, self.env, self.meter))
            self.tasks_trained += 1
            if plan.prefix is not None and plan.prefix.save:
                # Scored once here: a fork whose own hooks leave the weights as saved takes these scores (_shared_scores).
                state.matrix = [self._score(state, step)]
                state.status, state.metrics = "FINISHED", {schema.TRAIN_TIME_METRIC: self.prefix_seconds}
                save_state(plan.prefix.folder, state)
                return
            # No checkpoint after the last task: the run finishes next and deletes its weights unread. A run killed
            # between here and then resumes from the previous checkpoint (steps_done stays there) and retrains it.
            # Nor before checkpoint_every_s have passed since the last one: a short task costs less to retrain than to save.
            # The checkpoint is taken now (scoring changes no state it holds) and written while the tasks are scored.
            due = self.folder and step < last_step and time.perf_counter() - self.last_checkpoint >= plan.checkpoint_every_s
            pending = self._start_checkpoint(step) if due else None
            scoring = time.perf_counter()
            try:
                row = self._score(state, step)
                scored = time.perf_counter() - scoring
            finally:
                if pending is not None:
                    pending.wait()  # on disk before the step counts as done
                    self.last_checkpoint = time.perf_counter()
            result.matrix.append(row)
            if self.probe:
                self.probe(self.model, step)
            if self.folder:
                if pending is not None:
                    state.steps_done = step
                save_state(self.folder, state)
            trained = {schema.TRAIN_TIME_METRIC: self.meter.task_seconds, schema.EVAL_TIME_METRIC: scored,
                       schema.TRAINABLE_PARAMS_METRIC: float(self.model.trainable_parameters())}
            self._log_step(step, row, {**trained, **self._extra()})
            if self.probe and step == len(plan.tasks) and self.logger:
                self.probe.finish(self.logger)

    def _score(self, state: RunState, step: int) -> list[float]:
        """The matrix row after ``step`` (test), its per-example hits and the validation row added to ``state``.

        A fork's task-1 scores come from its prefix when its own hooks left the weights as the prefix saved them.
        """
        shared = self._shared_scores(step)
        if shared is not None:
            row, correct, valid = shared
            state.correct.append(correct)
            if self.validate:
                state.valid_matrix.append(valid)
            return row
        with known_warnings_silenced():
            row = self.evaluate(self.model, step)
            state.correct.append(self.evaluate.correct)
            if self.validate:
                state.valid_matrix.append(self.validate(self.model, step))
        return row

    def _shared_scores(self, step: int) -> tuple[list[float], list, list[float]] | None:
        """The prefix's step-1 scores, if this run forked it and its model equals the saved one (else None)."""
        if step != PREFIX_TASKS or not self.fork:
            return None
        saved, self.fork = self.fork["model"], None  # not needed again: its memory goes
        prefix = self.prefix_state
        if prefix is None or not prefix.matrix or len(prefix.correct) < 2:  # a prefix saved before it scored task 1
            return None
        current = self.model.state_dict()
        if current.keys() != saved.keys() or not all(torch.equal(current[k], saved[k]) for k in current):
            return None  # the strategy's hooks changed the model: score it
        return prefix.matrix[0], prefix.correct[1], prefix.valid_matrix[0] if prefix.valid_matrix else []

    def _start_checkpoint(self, step: int) -> PendingCheckpoint:
        return start_checkpoint(self.folder, step, self.model, self.strategy.optimizer, self.plugins, self.strategy.clock, self.loss_scale)

    def _at_prefix_end(self, step: int):
        """Where task 1's epochs end in a run linked to a shared prefix: save the prefix there, or fork it in their place."""
        prefix, strategy = self.plan.prefix, self.strategy
        if prefix is None or step != PREFIX_TASKS:
            return nullcontext()
        if prefix.save:
            def save() -> None:
                self.prefix_seconds = save_prefix(prefix.folder, strategy, self.meter, self.loss_scale)

            return at_training_end(strategy, save)
        if self.fork is None:  # resumed after task 1: nothing to fork
            return nullcontext()
        def fork() -> None:
            fork_prefix(self.fork, strategy, self.meter, self.loss_scale)
            self.loss_share.trained_as_naive()

        return at_training_end(strategy, fork, train=False)

    def _metrics(self, result: RunResult, tasks_trained: int) -> dict[str, float]:
        """The summary metrics of the matrix and the run's cost metrics."""
        metrics = final_metrics(result.matrix, result.initial, self.plan.strategy.train_data) if result.matrix else {}
        if result.matrix and self.plan.strategy.train_data != "joint":  # joint training has no steps to flip between
            nfr = summary_flip_rate(self.state.correct, self.evaluate.sizes())
            if nfr is not None:
                metrics[schema.NFR_METRIC] = nfr
        valid = final_valid_acc(self.state.valid_matrix)
        if valid is not None:
            metrics[schema.VALID_ACC_METRIC] = valid
        peak = peak_memory_mb(self.device)
        metrics.update(
            wall_time_s=result.wall_time_s,
            train_examples_per_s=self.meter.examples_per_second,
            peak_memory_mb=peak,
            extra_memory_mb=max(peak - self.model_memory_mb, 0.0),
            train_time_per_task_s=self.meter.seconds / tasks_trained if tasks_trained else 0.0,
            trainable_params=float(self.model.trainable_parameters()),
            total_params=float(sum(p.numel() for p in self.model.parameters())),
        )
        if self.loss_scale:
            metrics["fp16_skipped_steps"] = float(self.loss_scale.skipped_steps)
        if self.state.train_time_saved_s:
            metrics[schema.TRAIN_TIME_SAVED_METRIC] = self.state.train_time_saved_s
        return metrics

    def _save_outcome(self, state: RunState, result: RunResult) -> None:
        """The run's outcome in its folder; a finished run's weights are deleted (its results live in state.json and MLflow)."""
        if not self.folder:
            return
        state.status, state.metrics, state.error = result.status, result.metrics, result.error
        save_state(self.folder, state)
        if result.status == "FINISHED":
            remove_checkpoints(self.folder)
            if self.probe:
                self.probe.remove_files()


def train_and_evaluate(plan: RunPlan, logger: RunLogger | None = None, show_progress: bool = True, folder: Path | None = None) -> RunResult:
    """Train and score one run (see TrainingRun)."""
    return TrainingRun(plan, logger, show_progress, folder).execute()
