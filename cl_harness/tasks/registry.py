"""The task-kind registry: for each kind of task, how it is tokenised, trained, scored and reported.

A kind is one module exposing ``INFO`` (a TaskKindInfo), registered in ``cl_harness/tasks/__init__.py``,
like a strategy. The runner and the evaluator reach a task's behaviour only through its kind.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from cl_harness.data.benchmark import EncodedTask, LabelSpace
from cl_harness.data.tasks import TaskData

EncodeTexts = Callable[[list[str]], Tensor]  # texts -> (n, 3, max_length) packed tokens


@dataclass
class KindEnv:
    """What a kind's training and scoring may read: the device, batch sizes and the kinds' own resources."""

    device: torch.device
    batch_size: int
    eval_batch_size: int
    epochs: int = 1
    resources: Mapping[str, Any] = field(default_factory=dict)  # kind name -> what its ``resources(tokenizer)`` built
    loss_scale: Any = None  # fp16: the run's DynamicLossScale
    demonstrations: bool = False  # score prompts with in-context demonstrations (a strategy's ``demonstrations``)


@dataclass
class TrainStep:
    """One training step of a run: train ``model`` on ``task`` (``experience`` is its Avalanche data)."""

    model: Any
    strategy: Any  # the run's Avalanche template, with the strategy's plugins
    task: EncodedTask
    experience: Any
    env: KindEnv
    meter: Any  # the run's TrainingMeter: a kind trained outside the template adds its seconds and examples


def train_in_loop(step: TrainStep) -> None:
    """The strategy's base loop and plugins train on the step's experience (its loss is the model's ``criterion``)."""
    step.strategy.train(step.experience, num_workers=0)


def encode_labelled(task: TaskData, index: int, space: LabelSpace, encode: EncodeTexts) -> EncodedTask:
    """Tokenise a task's train, test and validation texts, with its labels mapped into the label space."""
    return EncodedTask(
        name=task.name,
        index=index,
        train_inputs=encode(task.train_texts),
        train_targets=space.targets(index, task.train_labels),
        test_inputs=encode(task.test_texts),
        test_targets=space.targets(index, task.test_labels),
        kind=task.kind,
        valid_inputs=encode(task.valid_texts) if task.valid_labels else None,
        valid_targets=space.targets(index, task.valid_labels) if task.valid_labels else None,
    )


@dataclass(frozen=True)
class TaskKindInfo:
    """A registered task kind."""

    name: str
    summary: str
    column_metric: str  # what fills the task's accuracy-matrix column (``accuracy_matrix.json``'s ``column_metrics``)
    score: Callable[[Any, EncodedTask, KindEnv, Callable[[int], None]], tuple[float, dict[str, float]]]
    # (column value, extra per-task metrics by prefix, e.g. {"pppl": 12.3}[, (n,) bool hits per example]) of the split
    # in the task's test_inputs/test_targets (the Evaluator puts the validation split there); on_batch(n) advances the bar
    train: Callable[[TrainStep], None] = train_in_loop  # one step's training on the task: the strategy's loop by default
    encode: Callable[[TaskData, int, LabelSpace, EncodeTexts], EncodedTask] = encode_labelled
    labelled: bool = True  # its examples have class labels (per-class sampling and caps apply)
    resources: Callable[[Any], Any] | None = None  # tokenizer -> what training and scoring need (KindEnv.resources)
    prepare_model: Callable[[Any, Any], None] | None = None  # (model, resources): add what the kind needs (a head)
    check: Callable[[Any, Sequence[Any], Any], None] | None = None  # (loaded experiment, strategy specs, tokenizer)


class TaskKindRegistry:
    """Task kinds by name; a name registers once."""

    def __init__(self) -> None:
        self._kinds: dict[str, TaskKindInfo] = {}

    def register(self, info: TaskKindInfo) -> None:
        if info.name in self._kinds:
            raise ValueError(f"task kind {info.name!r} is already registered")
        self._kinds[info.name] = info

    def get(self, name: str) -> TaskKindInfo:
        try:
            return self._kinds[name]
        except KeyError:
            raise KeyError(f"unknown task kind {name!r}; registered: {', '.join(self._kinds)}") from None

    def names(self) -> list[str]:
        return list(self._kinds)

    def __contains__(self, name: str) -> bool:
        return name in self._kinds

    def __iter__(self) -> Iterator[TaskKindInfo]:
        return iter(self._kinds.values())

    def used_by(self, kinds: Sequence[str]) -> list[TaskKindInfo]:
        """The registered kinds of these tasks' kinds, each once, in first-use order."""
        return [self.get(name) for name in dict.fromkeys(kinds)]

    def resources(self, kinds: Sequence[str], tokenizer) -> dict[str, Any]:
        """What each used kind needs from the tokenizer (``KindEnv.resources``)."""
        return {k.name: k.resources(tokenizer) for k in self.used_by(kinds) if k.resources is not None}

    def encode_tasks(self, tasks: Sequence[TaskData], space: LabelSpace, encode: EncodeTexts) -> list[EncodedTask]:
        """Tokenise every task once, each the way its kind says."""
        return [self.get(task.kind).encode(task, index, space, encode) for index, task in enumerate(tasks)]

    def column_metrics(self, tasks: Sequence[EncodedTask]) -> list[str]:
        """What each accuracy-matrix column holds, in the tasks' order."""
        return [self.get(task.kind).column_metric for task in tasks]
