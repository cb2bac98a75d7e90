"""LwF for generative backbones: distil the previous model's answer-token distributions into the model.

Li & Hoiem 2016, "Learning without Forgetting" (ECCV). The teacher is the model after the last task,
frozen; on the new task's rows, ``KL(softmax(teacher / T) || softmax(model / T))`` is taken at every
real answer position over the whole vocabulary, averaged over those positions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cl_harness.models.generative import IGNORE, answer_targets
from cl_harness.strategies.generative.base import GenerativePlugin, Learner
from cl_harness.strategies.lwf import frozen_copy


def answer_distillation(logits: Tensor, teacher_logits: Tensor, x: Tensor, temperature: float) -> Tensor:
    """KL from the teacher's to the model's tempered answer-token distributions, mean over real answer tokens."""
    valid = answer_targets(x) != IGNORE  # (batch, answer)
    log_p = torch.log_softmax(logits[valid] / temperature, dim=-1)  # (tokens, vocab)
    q = torch.softmax(teacher_logits[valid] / temperature, dim=-1)
    return F.kl_div(log_p, q, reduction="batchmean")


class GenerativeLwF(GenerativePlugin):
    """``loss + alpha * KL(teacher || model)`` on answer tokens, from the second task on."""

    def __init__(self, alpha: float, temperature: float) -> None:
        self.alpha = alpha
        self.temperature = temperature
        self.teacher = None

    def penalty(self, learner: Learner, x: Tensor, y: Tensor, logits: Tensor) -> Tensor | None:
        if self.teacher is None or self.alpha == 0:
            return None
        with torch.no_grad():
            teacher_logits = self.teacher(x)  # (batch, answer, vocab)
        return self.alpha * answer_distillation(logits, teacher_logits, x, self.temperature)

    def after_task(self, learner: Learner) -> None:
        self.teacher = frozen_copy(learner.model)


def build(config, context) -> list:
    return [GenerativeLwF(config.alpha, config.temperature)]
