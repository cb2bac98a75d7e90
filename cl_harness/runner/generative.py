"""Generative experiments: check, tokenise and run instruction tasks on a causal or seq2seq backbone.

The same contracts as the encoder runner (accuracy matrix, step metrics, ``RunResult``), with its own
training loop: the LM loss on answer tokens, strategy behaviour from ``strategies.generative`` plugins,
and rank classification for every column. Step 0 is the untrained model's real zero-shot score.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from cl_harness.config.loader import LoadedExperiment
from cl_harness.data.benchmark import LabelSpace
from cl_harness.data.instruction import (
    EncodedInstructionTask,
    InstructionSettings,
    encode_instruction_tasks,
)
from cl_harness.data.tasks import load_stream_tasks
from cl_harness.errors import TrainingError
from cl_harness.evaluation.rank_classification import (
    exact_match,
    rank_classification_accuracy,
)
from cl_harness.models.generative import (
    GenerativeClassifier,
    answer_loss,
    context_length,
    load_generative_config,
    load_generative_model,
    load_generative_tokenizer,
)
from cl_harness.runner.checkpoint import RunState, save_state
from cl_harness.runner.grid import PlannedRun, plan_runs, resolve_orders
from cl_harness.runner.optimizer import build_optimizer
from cl_harness.strategies.generative import GENERATIVE, refusal
from cl_harness.strategies.generative.base import Learner
from cl_harness.strategies.registry import BuildContext, StrategyRegistry, StrategySpec
from cl_harness.tracking.mlflow_logger import metric_key

EXACT_MATCH_METRIC = "em/{task}"  # free-generation exact match beside a column (moves to tracking's schema at merge)


def check_backbone_kind(loaded: LoadedExperiment, strategies: list[StrategySpec]) -> None:
    """Refuse a strategy (or one of its plugins) that cannot run on ``backbone.kind``, with the reason."""
    kind = loaded.config.backbone.kind
    if kind == "encoder":
        for index, task in enumerate(loaded.stream.config.tasks):
            if task.instruction is not None:
                raise loaded.stream.source.error(
                    ("tasks", index, "instruction"), "applies to generative backbones only; the experiment's backbone.kind is encoder",
                    hint="set backbone.kind: causal_lm or seq2seq, or remove the instruction block",
                )
    for index, spec in enumerate(strategies):
        for plugin in spec.plugins:
            reason = refusal(plugin.name, kind)
            if reason:
                raise loaded.source.error(
                    ("strategies", index), f"strategy {plugin.name!r} cannot run on backbone.kind {kind}: {reason}",
                    hint="`cl-harness strategies` lists the backbone kinds of each strategy",
                )
    in_context = {(p.config.shots, p.config.seed) for s in strategies for p in s.plugins if p.name == "in_context"}
    if len(in_context) > 1:
        raise loaded.source.error(("strategies",), "give every in_context strategy the same shots and seed")


def check_generative_experiment(loaded: LoadedExperiment, registry: StrategyRegistry):
    """Validate a generative experiment: strategies against the kind, weights against the kind, tasks and lengths."""
    from cl_harness.runner.prepare import CheckedExperiment, cap_test_per_class

    config = loaded.config
    stream = loaded.stream.config
    strategies = registry.parse_strategies(config.strategies, stream.scenario, loaded.source)
    check_backbone_kind(loaded, strategies)
    if config.backbone.peft.method != "none":
        raise loaded.source.error(
            ("backbone", "peft", "method"), "generative backbones take LoRA through the seq_lora / inc_lora / o_lora strategies",
            hint="remove backbone.peft and list e.g. {o_lora: {lora_rank: 8}} under strategies",
        )
    orders = resolve_orders(config, [t.name for t in stream.tasks], loaded.source)
    runs = plan_runs(strategies, config.seeds, orders)
    tasks = [cap_test_per_class(t, config.training.eval_per_class) for t in load_stream_tasks(loaded.stream)]
    tokenizer = load_generative_tokenizer(config.backbone)
    model_config = load_generative_config(config.backbone)
    checked = CheckedExperiment(loaded, tasks, LabelSpace.build(stream.scenario, tasks), strategies, tokenizer, runs)
    checked.generative_context = context_length(model_config)
    encode_generative(checked)  # every template, label text and prompt length checked before any run
    return checked


def encode_generative(checked) -> list[EncodedInstructionTask]:
    """Prompt/answer rows of every task (with in-context prompts when an in_context strategy is listed)."""
    loaded = checked.loaded
    shots = [(p.config.shots, p.config.seed) for s in checked.strategies for p in s.plugins if p.name == "in_context"]
    settings = InstructionSettings(
        configs=[t.instruction for t in loaded.stream.config.tasks],
        source=loaded.stream.source,
        max_text_tokens=loaded.config.training.max_length,
        context=getattr(checked, "generative_context", None),
        seq2seq=loaded.config.backbone.kind == "seq2seq",
        shots=shots[0][0] if shots else 0,
        seed=shots[0][1] if shots else 0,
    )
    cached = getattr(checked, "generative_encoded", None)
    if cached is None:
        cached = checked.generative_encoded = encode_instruction_tasks(checked.tasks, checked.space, checked.tokenizer, settings)
    return cached


def build_generative_model(prepared, spec: StrategySpec, device) -> GenerativeClassifier:
    """The LM wrapped for answer logits, with the strategy's adapters inserted."""
    checked = prepared.checked
    backbone = checked.loaded.config.backbone
    tokenizer = checked.tokenizer
    model = GenerativeClassifier(load_generative_model(backbone, tokenizer), backbone.kind, tokenizer.pad_token_id)
    for plugin in spec.plugins:
        entry = GENERATIVE[plugin.name]
        if entry.prepare_model is not None:
            entry.prepare_model(plugin.config, model, len(checked.tasks))
    return model.to(device)


class GenerativeEvaluation:
    """One accuracy-matrix row: rank-classification accuracy of every task, plus exact match where asked (``extra``)."""

    def __init__(self, tasks, tokenizer, batch_size: int, device, show_progress: bool, in_context: bool) -> None:
        self.tasks, self.tokenizer, self.batch_size, self.device = tasks, tokenizer, batch_size, device
        self.show_progress, self.in_context = show_progress, in_context
        self.extra: dict[str, float] = {}

    def __call__(self, model, step: int) -> list[float]:
        row, self.extra = [], {}
        total = sum(len(t.test_targets) for t in self.tasks)
        with tqdm(total=total, desc=f"evaluate step {step}", unit="ex", leave=False, disable=not self.show_progress) as bar:
            for task in self.tasks:
                inputs = task.in_context_inputs if self.in_context else task.test_inputs
                row.append(rank_classification_accuracy(
                    model, inputs, task.test_targets, task.candidates, task.candidate_units, self.batch_size, self.device,
                    on_batch=bar.update,
                ))
                if task.exact_match:
                    local = [task.candidate_units.tolist().index(int(u)) for u in task.test_targets]
                    score = exact_match(model, self.tokenizer, inputs, task.label_texts, local, self.device, task.candidates.shape[1])
                    self.extra[metric_key(EXACT_MATCH_METRIC.format(task=task.name))] = score
        return row


def training_steps(tasks: list[EncodedInstructionTask], mode: str) -> list[tuple[int, list[EncodedInstructionTask]]]:
    """(step, tasks whose rows are trained) by the strategy's training-data mode; ``none`` trains nothing."""
    if mode == "none":
        return []
    if mode == "current":
        return [(i + 1, [t]) for i, t in enumerate(tasks)]
    if mode == "cumulative":
        return [(i + 1, tasks[: i + 1]) for i in range(len(tasks))]
    return [(len(tasks), list(tasks))]


def train_task(learner: Learner, plugins: list, inputs: torch.Tensor, targets: torch.Tensor, epochs: int) -> int:
    """Train on one step's rows (answer-token LM loss + plugin terms); returns the rows trained, memory rows included."""
    model, rows = learner.model, 0
    model.train()
    for plugin in plugins:
        plugin.before_task(learner)
    for _ in range(epochs):
        for index in torch.randperm(len(targets)).split(learner.batch_size):
            x, y = inputs[index].to(learner.device), targets[index].to(learner.device)
            for plugin in plugins:
                x, y = plugin.extend_batch(learner, x, y)
            learner.optimizer.zero_grad()
            logits = model(x)  # (batch, answer, vocab)
            loss = answer_loss(logits, x)
            for plugin in plugins:
                term = plugin.penalty(learner, x, y, logits)
                if term is not None:
                    loss = loss + term
            if not torch.isfinite(loss):
                raise TrainingError(f"non-finite loss ({float(loss)}) on task {learner.task.name!r}")
            loss.backward()
            for plugin in plugins:
                plugin.after_backward(learner)
            learner.optimizer.step()
            rows += len(y)
    for plugin in plugins:
        plugin.after_task(learner)
    return rows


def train_and_evaluate_generative(prepared, planned: PlannedRun, logger=None, show_progress: bool = True,
                                  keep_strategy: bool = False, folder: Path | None = None):
    """The zero-shot row, then each task in the run's order, all tasks scored after each (no mid-run resume).

    Returns the RunResult, or ``(result, learner)`` with ``keep_strategy`` (the trained model and plugins).
    """
    from cl_harness.runner.run import (
        RunResult,
        current_memory_mb,
        final_metrics,
        peak_memory_mb,
        reset_peak_memory,
        resolve_device,
        seed_everything,
        step_metrics,
    )

    checked = prepared.checked
    config = checked.loaded.config
    spec = planned.strategy
    device = resolve_device(config.training.device)
    ordered = [prepared.encoded[i] for i in planned.order]
    tasks = [t.name for t in ordered]
    seed_everything(planned.seed)
    reset_peak_memory(device)
    model = build_generative_model(prepared, spec, device)
    model_memory_mb = current_memory_mb(device)
    context = BuildContext(checked.scenario, len(ordered), config.training.batch_size, config.training.eval_batch_size, device, model)
    plugins = [p for plugin in spec.plugins for p in GENERATIVE[plugin.name].build(plugin.config, context)]
    optimizer = build_optimizer(model, config.training.lr, config.training.weight_decay)
    learner = Learner(model, optimizer, device, config.training.batch_size, plugins=plugins)
    in_context = any(p.name == "in_context" for p in spec.plugins)
    evaluate = GenerativeEvaluation(ordered, checked.tokenizer, config.training.eval_batch_size, device, show_progress, in_context)

    def log_step(step: int, row: list[float], extra: dict) -> None:
        if logger:
            logger.log_step(step, {**step_metrics(tasks, row, step), **extra})

    started = time.perf_counter()
    initial = evaluate(model, 0)
    log_step(0, initial, dict(evaluate.extra))
    result = RunResult(spec.label, planned.seed, tasks, initial, planned.order_index, [], run_id=logger.run_id if logger else None,
                       column_metrics=["accuracy"] * len(ordered))
    train_seconds = examples = 0.0
    steps = training_steps(ordered, spec.train_data)
    try:
        for step, trained in steps:
            learner.position, learner.task = step - 1, ordered[step - 1]
            inputs = torch.cat([t.train_inputs for t in trained])
            targets = torch.cat([t.train_targets for t in trained])
            task_started = time.perf_counter()
            examples += train_task(learner, plugins, inputs, targets, config.training.epochs)
            task_seconds = time.perf_counter() - task_started
            train_seconds += task_seconds
            row = evaluate(model, step)
            result.matrix.append(row)
            log_step(step, row, {"train_time_s": task_seconds, "trainable_params": float(model.trainable_parameters()), **evaluate.extra})
    except TrainingError as exc:
        result.status, result.error = "FAILED", str(exc)
    else:
        result.status = "FINISHED"
    if not steps:  # zero_shot / in_context: the one row is the untrained model's, logged as the last step
        result.matrix = [list(initial)]
        log_step(len(ordered), initial, dict(evaluate.extra))
    result.wall_time_s = time.perf_counter() - started
    if result.matrix:
        result.metrics = final_metrics(result.matrix, result.initial, "joint" if spec.train_data in ("joint", "none") else spec.train_data)
    result.metrics.update(
        wall_time_s=result.wall_time_s,
        train_examples_per_s=examples / train_seconds if train_seconds else 0.0,
        peak_memory_mb=peak_memory_mb(device),
        extra_memory_mb=max(peak_memory_mb(device) - model_memory_mb, 0.0),
        train_time_per_task_s=train_seconds / len(steps) if steps else 0.0,
        trainable_params=float(model.trainable_parameters()),
        total_params=float(sum(p.numel() for p in model.parameters())),
    )
    if folder:
        state = RunState(result.run_id, result.status, len(result.matrix), tasks, initial, result.matrix, result.metrics, result.error)
        save_state(folder, state)
    return (result, learner) if keep_strategy else result
