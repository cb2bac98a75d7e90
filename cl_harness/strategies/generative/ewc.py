"""EWC for generative backbones: a quadratic pull toward the weights after each task, weighted by the Fisher.

Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in neural networks" (PNAS); online mode as
Schwarz et al. 2018 ("Progress & Compress", ICML). The Fisher diagonal is the mean squared gradient of
the answer-token LM loss over the task's training rows (empirical Fisher, one batch at a time).
"""

from __future__ import annotations

import torch
from torch import Tensor

from cl_harness.models.generative import answer_loss
from cl_harness.strategies.generative.base import GenerativePlugin, Learner


def empirical_fisher(model, inputs: Tensor, batch_size: int, device) -> dict[str, Tensor]:
    """Mean over batches of the squared gradient of the answer loss, for every trainable parameter."""
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    fisher = {n: torch.zeros_like(p) for n, p in params.items()}
    was_training = model.training
    model.eval()
    batches = inputs.split(batch_size)
    for x in batches:
        model.zero_grad()
        x = x.to(device)
        answer_loss(model(x), x).backward()
        for n, p in params.items():
            if p.grad is not None:
                fisher[n] += p.grad.detach() ** 2 / len(batches)
    model.zero_grad()
    model.train(was_training)
    return fisher


class GenerativeEWC(GenerativePlugin):
    """``lambda / 2 * sum_k F_k (theta - theta*_k)^2`` per past task (separate) or one running term (online)."""

    def __init__(self, ewc_lambda: float, mode: str, decay: float) -> None:
        self.ewc_lambda = ewc_lambda
        self.mode = mode
        self.decay = decay
        self.terms: list[tuple[dict[str, Tensor], dict[str, Tensor]]] = []  # (Fisher, anchor) per kept term

    def penalty(self, learner: Learner, x: Tensor, y: Tensor, logits: Tensor) -> Tensor | None:
        if not self.terms or self.ewc_lambda == 0:
            return None
        return self.ewc_lambda / 2 * self.distance(learner.model)

    def distance(self, model) -> Tensor:
        """``sum_k sum_i F_k,i (theta_i - theta*_k,i)^2`` over the kept terms."""
        params = dict(model.named_parameters())
        total = next(iter(params.values())).new_zeros(())
        for fisher, anchor in self.terms:
            for name, weight in fisher.items():
                total = total + (weight * (params[name] - anchor[name]) ** 2).sum()
        return total

    def after_task(self, learner: Learner) -> None:
        model = learner.model
        fisher = empirical_fisher(model, learner.task.train_inputs, learner.batch_size, learner.device)
        anchor = {n: p.detach().clone() for n, p in model.named_parameters() if n in fisher}
        if self.mode == "online" and self.terms:
            old, _ = self.terms[0]
            fisher = {n: self.decay * old[n] + f for n, f in fisher.items()}
            self.terms = []
        self.terms.append((fisher, anchor))


def build(config, context) -> list:
    return [GenerativeEWC(config.ewc_lambda, config.mode, config.decay)]
