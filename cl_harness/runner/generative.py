"""One run on a generative backbone: instruction tasks on a causal or seq2seq LM.

The same contracts as the encoder run (accuracy matrix, step metrics, ``RunResult``) and the same seam: each task
trains and scores through its kind (``tasks/instruction.py``), the model comes from the plan's factory. What differs
is the loop's state: a ``Learner`` with ``strategies.generative`` plugins instead of an Avalanche template, and no
mid-run resume. Step 0 is the untrained model's real zero-shot score.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cl_harness.config.experiment import BackboneConfig
from cl_harness.errors import TrainingError
from cl_harness.evaluation.evaluator import Evaluator
from cl_harness.models.generative import GenerativeClassifier, load_generative_model
from cl_harness.runner.checkpoint import RunState, save_state
from cl_harness.runner.hooks import TrainingMeter
from cl_harness.runner.optimizer import build_optimizer
from cl_harness.runner.run import (
    RunPlan,
    RunResult,
    current_memory_mb,
    final_metrics,
    peak_memory_mb,
    reset_peak_memory,
    resolve_device,
    seed_everything,
    step_metrics,
)
from cl_harness.strategies.generative import GENERATIVE
from cl_harness.strategies.generative.base import Learner
from cl_harness.tasks.instruction import NAME as INSTRUCTION
from cl_harness.tasks.registry import TrainStep
from cl_harness.tracking import schema
from cl_harness.tracking.writer import RunLogger


@dataclass
class GenerativeModelFactory:
    """Builds a run's model: the LM wrapped for answer logits (a strategy's adapters are added by the run)."""

    backbone: BackboneConfig
    tokenizer: Any

    def __call__(self) -> GenerativeClassifier:
        return GenerativeClassifier(load_generative_model(self.backbone, self.tokenizer), self.backbone.kind, self.tokenizer.pad_token_id)


def build_generative_model(plan: RunPlan, device) -> GenerativeClassifier:
    """The plan's LM with the strategy's adapters inserted."""
    model = plan.model_factory()
    for plugin in plan.strategy.plugins:
        entry = GENERATIVE[plugin.name]
        if entry.prepare_model is not None:
            entry.prepare_model(plugin.config, model, len(plan.tasks))
    return model.to(device)


def training_steps(tasks: list, mode: str) -> list[tuple[int, list]]:
    """(step, tasks whose rows are trained) by the strategy's training-data mode; ``none`` trains nothing."""
    if mode == "none":
        return []
    if mode == "current":
        return [(i + 1, [t]) for i, t in enumerate(tasks)]
    if mode == "cumulative":
        return [(i + 1, tasks[: i + 1]) for i in range(len(tasks))]
    return [(len(tasks), list(tasks))]


class GenerativeRun:
    """The zero-shot row, then each step of the plan's order, all tasks scored after each (no mid-run resume).

    After ``execute``, ``learner`` (the model, optimizer and the strategy's plugins) stays inspectable.
    """

    def __init__(self, plan: RunPlan, logger: RunLogger | None = None, show_progress: bool = True, folder: Path | None = None) -> None:
        self.plan, self.logger, self.show_progress, self.folder = plan, logger, show_progress, folder
        self.device = resolve_device(plan.training.device)
        self.learner: Learner | None = None

    def execute(self) -> RunResult:
        plan, device, training = self.plan, self.device, self.plan.training
        seed_everything(plan.seed)
        reset_peak_memory(device)
        model = build_generative_model(plan, device)
        model_memory_mb = current_memory_mb(device)
        context = plan.context(model, device)
        plugins = [p for plugin in plan.strategy.plugins for p in GENERATIVE[plugin.name].build(plugin.config, context)]
        self.learner = learner = Learner(model, build_optimizer(model, training.lr, training.weight_decay), device, training.batch_size, plugins=plugins)
        env = plan.kind_env(device)
        in_context = any(p.name == "in_context" for p in plan.strategy.plugins)
        env.resources[INSTRUCTION] = dataclasses.replace(env.resources[INSTRUCTION], in_context=in_context)
        evaluate = Evaluator(plan.tasks, plan.kinds, env, self.show_progress, describe=plan.label)
        meter = TrainingMeter()

        def log_step(step: int, row: list[float], extra: dict) -> None:
            if self.logger:
                self.logger.log_step(step, {**step_metrics(plan.task_names, row, step), **extra})

        def extra() -> dict[str, float]:
            return {schema.metric_key(name): value for name, value in evaluate.extra.items()}

        started = time.perf_counter()
        initial = evaluate(model, 0)
        log_step(0, initial, extra())
        result = RunResult(
            plan.strategy.label, plan.seed, plan.task_names, initial, plan.order_index, [],
            run_id=self.logger.run_id if self.logger else None, column_metrics=plan.kinds.column_metrics(plan.tasks),
        )
        steps = training_steps(plan.tasks, plan.strategy.train_data)
        try:
            for step, trained in steps:
                task = plan.tasks[step - 1]
                learner.position = step - 1
                plan.kinds.get(task.kind).train(TrainStep(model, learner, task, trained, env, meter))
                row = evaluate(model, step)
                result.matrix.append(row)
                trained_metrics = {schema.TRAIN_TIME_METRIC: meter.task_seconds, schema.TRAINABLE_PARAMS_METRIC: float(model.trainable_parameters())}
                log_step(step, row, {**trained_metrics, **extra()})
        except TrainingError as exc:
            result.status, result.error = "FAILED", str(exc)
        else:
            result.status = "FINISHED"
        if not steps:  # zero_shot / in_context: the one row is the untrained model's, logged as the last step
            result.matrix = [list(initial)]
            log_step(len(plan.tasks), initial, extra())
        result.wall_time_s = time.perf_counter() - started
        if result.matrix:
            result.metrics = final_metrics(result.matrix, result.initial, plan.strategy.train_data)
        peak = peak_memory_mb(device)
        result.metrics.update(
            wall_time_s=result.wall_time_s,
            train_examples_per_s=meter.examples_per_second,
            peak_memory_mb=peak,
            extra_memory_mb=max(peak - model_memory_mb, 0.0),
            train_time_per_task_s=meter.seconds / len(steps) if steps else 0.0,
            trainable_params=float(model.trainable_parameters()),
            total_params=float(sum(p.numel() for p in model.parameters())),
        )
        if self.folder:
            state = RunState(result.run_id, result.status, len(result.matrix), plan.task_names, initial, result.matrix, result.metrics, result.error)
            save_state(self.folder, state)
        return result
