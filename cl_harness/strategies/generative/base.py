"""The plugin interface of the generative training loop (instruction tasks on causal and seq2seq LMs).

A plugin's hooks are named after the loop's events; each default does nothing. ``learner`` is the
loop's state: the model, the optimizer, the device, the batch size and the position of the task
being trained (0-based).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor


@dataclass
class Learner:
    """What the loop shares with its plugins."""

    model: Any  # GenerativeClassifier
    optimizer: Any
    device: torch.device
    batch_size: int
    position: int = 0  # tasks trained before this one
    task: Any = None  # the EncodedInstructionTask being trained
    plugins: list = field(default_factory=list)  # the strategy's GenerativePlugins


class GenerativePlugin:
    """Hooks of the generative loop."""

    def before_task(self, learner: Learner) -> None:
        """Called before the first batch of a task."""

    def extend_batch(self, learner: Learner, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The training batch, possibly with memory rows added. ``x: (batch, 3, length)``, ``y: (batch,)``."""
        return x, y

    def penalty(self, learner: Learner, x: Tensor, y: Tensor, logits: Tensor) -> Tensor | None:
        """A term added to the batch loss; ``logits`` ``(batch, answer, vocab)`` are the model's on ``x``."""
        return None

    def after_backward(self, learner: Learner) -> None:
        """Called after the loss's backward pass, before the optimizer step (gradient projection goes here)."""

    def after_task(self, learner: Learner) -> None:
        """Called after the last batch of a task."""


def sample_rows(count: int, size: int, generator: torch.Generator | None = None) -> Tensor:
    """``min(size, count)`` distinct row indices drawn uniformly. ``(k,)``."""
    return torch.randperm(count, generator=generator)[: min(size, count)]
