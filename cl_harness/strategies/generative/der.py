"""DER / DER++ for generative backbones: a reservoir of rows with the answer logits they had when trained.

Buzzega et al. 2020, "Dark Experience for General Continual Learning: a Strong, Simple Baseline" (NeurIPS).
The stored logits are the answer-position logits ``(answer, vocab)`` of each row; the replay term is the
MSE between the model's and the stored logits on real answer positions (+ beta * answer CE for DER++).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from cl_harness.models.generative import IGNORE, answer_loss, answer_targets
from cl_harness.strategies.generative.base import GenerativePlugin, Learner, sample_rows


class GenerativeDER(GenerativePlugin):
    """Reservoir over every trained row, with its logits; replay terms from the second batch on."""

    def __init__(self, mem_size: int, alpha: float, beta: float, replay_batch_size: int | None, seed: int = 0) -> None:
        self.mem_size, self.alpha, self.beta, self.replay_batch_size = mem_size, alpha, beta, replay_batch_size
        self.generator = torch.Generator().manual_seed(seed)
        self.rows: list[Tensor] = []  # each (3, length)
        self.logits: list[Tensor] = []  # each (answer, vocab), on the CPU
        self.seen = 0

    def penalty(self, learner: Learner, x: Tensor, y: Tensor, logits: Tensor) -> Tensor | None:
        total = None
        if self.rows:
            rows = sample_rows(len(self.rows), self.replay_batch_size or learner.batch_size, self.generator)
            mx = torch.stack([self.rows[i] for i in rows]).to(x.device)  # (k, 3, length)
            out = learner.model(mx)  # (k, answer, vocab)
            stored = torch.zeros_like(out)
            for k, i in enumerate(rows.tolist()):
                stored[k, : self.logits[i].shape[0]] = self.logits[i].to(out.device)
            valid = answer_targets(mx) != IGNORE  # (k, answer)
            total = self.alpha * F.mse_loss(out[valid], stored[valid])
            if self.beta > 0:
                total = total + self.beta * answer_loss(out, mx)
        self.store(x.detach().cpu(), logits.detach().cpu())
        return total

    def store(self, x: Tensor, logits: Tensor) -> None:
        """Reservoir sampling (Vitter 1985) of the batch's rows and their answer logits (trimmed to the real answer)."""
        valid_lengths = (answer_targets(x) != IGNORE).sum(1)
        for row in range(len(x)):
            self.seen += 1
            item = (x[row], logits[row, : int(valid_lengths[row])].clone())
            if len(self.rows) < self.mem_size:
                self.rows.append(item[0]), self.logits.append(item[1])
            else:
                slot = int(torch.randint(self.seen, (1,), generator=self.generator))
                if slot < self.mem_size:
                    self.rows[slot], self.logits[slot] = item


def build(config, context) -> list:
    return [GenerativeDER(config.mem_size, config.alpha, config.beta, config.replay_batch_size)]
