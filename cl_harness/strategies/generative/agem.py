"""A-GEM for generative backbones: project the gradient when it would raise the loss on past tasks' rows.

Chaudhry et al. 2019, "Efficient Lifelong Learning with A-GEM" (ICLR). The reference gradient is the
answer-loss gradient on ``sample_size`` rows drawn from the memory of past tasks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cl_harness.models.generative import answer_loss
from cl_harness.strategies.generative.base import GenerativePlugin, Learner, sample_rows


class GenerativeAGEM(GenerativePlugin):
    """``g <- g - (g.g_ref / g_ref.g_ref) g_ref`` when ``g.g_ref < 0``."""

    def __init__(self, patterns_per_experience: int, sample_size: int, seed: int = 0) -> None:
        self.patterns_per_experience = patterns_per_experience
        self.sample_size = sample_size
        self.generator = torch.Generator().manual_seed(seed)
        self.memory: list[Tensor] = []  # per past task, (k, 3, length)
        self.reference: list[Tensor] | None = None

    def _params(self, model) -> list:
        return [p for p in model.parameters() if p.requires_grad]

    def extend_batch(self, learner: Learner, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Compute the reference gradient before the batch (the batch itself is unchanged)."""
        self.reference = None
        if self.memory:
            memory = torch.cat(self.memory)
            rows = memory[sample_rows(len(memory), self.sample_size, self.generator)].to(learner.device)
            params = self._params(learner.model)
            grads = torch.autograd.grad(answer_loss(learner.model(rows), rows), params, allow_unused=True)
            self.reference = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        return x, y

    def after_backward(self, learner: Learner) -> None:
        if self.reference is None:
            return
        params = self._params(learner.model)
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
        dot = sum((g * r).sum() for g, r in zip(grads, self.reference))
        if dot < 0:
            norm = sum((r * r).sum() for r in self.reference)
            for p, r in zip(params, self.reference):
                if p.grad is not None:
                    p.grad -= dot / norm * r

    def after_task(self, learner: Learner) -> None:
        inputs = learner.task.train_inputs
        self.memory.append(inputs[sample_rows(len(inputs), self.patterns_per_experience, self.generator)])


def build(config, context) -> list:
    return [GenerativeAGEM(config.patterns_per_experience, config.sample_size)]
