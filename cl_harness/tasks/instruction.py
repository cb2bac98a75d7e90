"""Instruction tasks on a generative backbone: answer-only LM loss to train, rank classification to score.

Prompted classification as in T0 (Sanh et al., 2022, "Multitask Prompted Training Enables Zero-Shot Task
Generalization"): the column holds the accuracy of ranking the label texts by log-likelihood, and a task that asks
for it adds ``em/<task>``, the exact match of the freely generated answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import torch

from cl_harness.errors import TrainingError
from cl_harness.evaluation.rank_classification import exact_match, rank_classification_accuracy
from cl_harness.models.generative import answer_loss
from cl_harness.tasks.registry import TaskKindInfo, TrainStep

NAME = "instruction"
EM_PREFIX = "em"  # extra per-task metric: em/<task> (tracking.schema.EM_PREFIX)


@dataclass
class InstructionResources:
    """What scoring an instruction task reads: the tokenizer (exact match decodes) and which prompts to score."""

    tokenizer: Any
    in_context: bool = False  # score the test prompts with demonstrations (the in_context strategy)


def train_rows(learner, inputs: torch.Tensor, targets: torch.Tensor, epochs: int) -> int:
    """Train on one step's rows (answer-token LM loss + plugin terms); returns the rows trained, memory rows included."""
    model, plugins, rows = learner.model, learner.plugins, 0
    model.train()
    for plugin in plugins:
        plugin.before_task(learner)
    for _ in range(epochs):
        for index in torch.randperm(len(targets)).split(learner.batch_size):
            x, y = inputs[index].to(learner.device), targets[index].to(learner.device)  # (batch, 3, length), (batch,)
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


def train(step: TrainStep) -> None:
    """The generative learner (``step.strategy``) trains on the rows of the step's tasks (``step.experience``)."""
    learner, trained = step.strategy, step.experience
    learner.task = step.task
    inputs = torch.cat([t.train_inputs for t in trained])  # (rows, 3, length)
    targets = torch.cat([t.train_targets for t in trained])  # (rows,)
    started = time.perf_counter()
    step.meter.examples += train_rows(learner, inputs, targets, step.env.epochs)
    step.meter.task_seconds = time.perf_counter() - started
    step.meter.seconds += step.meter.task_seconds


def score(model, task, env, on_batch) -> tuple[float, dict[str, float]]:
    """Rank-classification accuracy on the test prompts, plus exact match where the task asks for it."""
    resources: InstructionResources = env.resources[NAME]
    inputs = task.in_context_inputs if resources.in_context else task.test_inputs  # (n_test, 3, length)
    value = rank_classification_accuracy(
        model, inputs, task.test_targets, task.candidates, task.candidate_units, env.eval_batch_size, env.device, on_batch=on_batch,
    )
    extra = {}
    if task.exact_match:
        local = [task.candidate_units.tolist().index(int(u)) for u in task.test_targets]
        extra[EM_PREFIX] = exact_match(model, resources.tokenizer, inputs, task.label_texts, local, env.device, task.candidates.shape[1])
    return value, extra


INFO = TaskKindInfo(
    name=NAME,
    summary="labelled texts as prompts to a causal or seq2seq LM; answer-only LM loss; the column holds rank-classification accuracy",
    column_metric="accuracy",  # rank-classification accuracy
    train=train,
    score=score,
)
