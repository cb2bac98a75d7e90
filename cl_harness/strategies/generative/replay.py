"""Replay for generative backbones: a memory of (prompt, answer) rows joins every training batch.

Rebuffi et al. 2017 ("iCaRL", CVPR) and Chaudhry et al. 2019 ("On Tiny Episodic Memories in Continual
Learning") for experience replay; here each memory row is a packed prompt with its label-text answer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cl_harness.strategies.generative.base import GenerativePlugin, Learner, sample_rows


class PromptAnswerMemory:
    """Rows kept by policy: ``reservoir`` (uniform over all rows seen), ``experience_balanced`` or ``class_balanced``."""

    def __init__(self, mem_size: int, policy: str, seed: int = 0) -> None:
        self.mem_size = mem_size
        self.policy = policy
        self.generator = torch.Generator().manual_seed(seed)
        self.groups: dict[int, tuple[Tensor, Tensor]] = {}  # group -> (rows (n, 3, length), units (n,))
        self.seen = 0

    def __len__(self) -> int:
        return sum(len(y) for _, y in self.groups.values())

    def add_task(self, position: int, x: Tensor, y: Tensor) -> None:
        """Take in a trained task's rows."""
        if self.policy == "reservoir":
            self._reservoir(x, y)
            return
        keys = [position] if self.policy == "experience_balanced" else sorted(set(y.tolist()))
        for key in keys:
            rows = torch.arange(len(y)) if self.policy == "experience_balanced" else (y == key).nonzero().flatten()
            self.groups[key] = (x[rows], y[rows])
        share = self.mem_size // len(self.groups)
        for key, (gx, gy) in self.groups.items():
            keep = sample_rows(len(gy), max(share, 1), self.generator)
            self.groups[key] = (gx[keep], gy[keep])

    def _reservoir(self, x: Tensor, y: Tensor) -> None:
        mx, my = self.groups.get(0, (x[:0], y[:0]))
        mx, my = list(mx), list(my)
        for row in range(len(y)):
            self.seen += 1
            if len(my) < self.mem_size:
                mx.append(x[row]), my.append(y[row])
            else:
                slot = int(torch.randint(self.seen, (1,), generator=self.generator))
                if slot < self.mem_size:
                    mx[slot], my[slot] = x[row], y[row]
        self.groups[0] = (torch.stack(mx), torch.stack(my))

    def sample(self, size: int) -> tuple[Tensor, Tensor]:
        x = torch.cat([gx for gx, _ in self.groups.values()])
        y = torch.cat([gy for _, gy in self.groups.values()])
        rows = sample_rows(len(y), size, self.generator)
        return x[rows], y[rows]


class GenerativeReplay(GenerativePlugin):
    """Each batch gets ``replay_batch_size`` memory rows; the trained task's rows enter the memory after it."""

    def __init__(self, mem_size: int, policy: str, replay_batch_size: int | None) -> None:
        self.memory = PromptAnswerMemory(mem_size, policy)
        self.replay_batch_size = replay_batch_size

    def extend_batch(self, learner: Learner, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if not len(self.memory):
            return x, y
        mx, my = self.memory.sample(self.replay_batch_size or learner.batch_size)
        return torch.cat([x, mx.to(x.device)]), torch.cat([y, my.to(y.device)])

    def after_task(self, learner: Learner) -> None:
        self.memory.add_task(learner.position, learner.task.train_inputs, learner.task.train_targets)


def build(config, context) -> list:
    return [GenerativeReplay(config.mem_size, config.policy, config.replay_batch_size)]
