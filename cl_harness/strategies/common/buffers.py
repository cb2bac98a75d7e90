"""Example memories shared by the rehearsal strategies: a reservoir of tensors (logits included) and Avalanche's buffers."""

from __future__ import annotations

from collections import defaultdict

import torch
from avalanche.benchmarks.utils import _taskaware_classification_subset
from avalanche.training.storage_policy import (
    ClassBalancedBuffer,
    ExemplarsBuffer,
    ExperienceBalancedBuffer,
    ReservoirSamplingBuffer,
)
from torch import Tensor


def padded(tensor: Tensor, shape: list[int]) -> Tensor:
    """``tensor`` ``(n, *smaller)`` zero-padded at the end of each example dimension to ``(n, *shape)``."""
    out = tensor.new_zeros((tensor.shape[0], *shape))
    out[(slice(None), *(slice(0, size) for size in tensor.shape[1:]))] = tensor
    return out


class ReservoirBuffer:
    """Reservoir sampling over a stream of examples, each a set of named tensors (Vitter 1985).

    After ``seen`` examples each one is in memory with probability ``mem_size / seen``; the
    memory never holds more than ``mem_size`` examples. Tensors are stored as given; a field whose
    examples vary in size (a language model's answer logits) is zero-padded to the largest seen.
    """

    def __init__(self, mem_size: int) -> None:
        self.mem_size = mem_size
        self.seen = 0
        self.fields: dict[str, Tensor] = {}  # name -> (mem_size, *example shape)

    def __len__(self) -> int:
        return min(self.seen, self.mem_size)

    def add(self, **batch: Tensor) -> None:
        """Offer every example of a batch (all tensors share the first dimension) to the memory."""
        batch = {name: value.detach() for name, value in batch.items()}
        if not self.fields:
            self.fields = {
                name: value.new_empty((self.mem_size, *value.shape[1:])) for name, value in batch.items()
            }
        for name, value in batch.items():  # an example wider than the stored ones (a longer answer): pad both
            if value.shape[1:] != self.fields[name].shape[1:]:
                shape = [max(a, b) for a, b in zip(self.fields[name].shape[1:], value.shape[1:])]
                self.fields[name], batch[name] = padded(self.fields[name], shape), padded(value, shape)
        size = len(next(iter(batch.values())))
        for row in range(size):
            if self.seen < self.mem_size:
                slot = self.seen
            else:
                slot = int(torch.randint(0, self.seen + 1, (1,)))
            self.seen += 1
            if slot < self.mem_size:
                for name, value in batch.items():
                    self.fields[name][slot] = value[row]

    def sample(self, size: int) -> dict[str, Tensor]:
        """Up to ``size`` distinct stored examples, drawn uniformly. Each field ``(n, *example shape)``."""
        rows = torch.randperm(len(self))[:size]
        return {name: stored[rows.to(stored.device)] for name, stored in self.fields.items()}


class TaskClassBalancedBuffer(ClassBalancedBuffer):
    """Avalanche's ClassBalancedBuffer keyed by (task label, target) instead of target alone.

    In task-incremental streams targets are per-task unit indices (every task has a class 0), so
    keying by target alone would merge different tasks' classes into one group.
    """

    def update_from_dataset(self, new_data, strategy=None):
        if len(new_data) == 0:
            return
        indices: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, (target, task) in enumerate(zip(new_data.targets, new_data.targets_task_labels)):
            indices[(int(task), int(target))].append(index)
        self.seen_classes.update(indices)
        lengths = dict(zip(sorted(self.seen_classes), self.get_group_lengths(len(self.seen_classes))))
        for key, key_indices in indices.items():
            subset = _taskaware_classification_subset(new_data, indices=key_indices)
            group = self.buffer_groups.get(key) or ReservoirSamplingBuffer(lengths[key])
            group.update_from_dataset(subset)
            self.buffer_groups[key] = group
        for key, group in self.buffer_groups.items():
            group.resize(strategy, lengths[key])


def make_storage_policy(policy: str, mem_size: int, scenario: str) -> ExemplarsBuffer:
    """The Avalanche buffer for a policy name; class balance counts (task, class) pairs in task-incremental streams."""
    if policy == "reservoir":
        return ReservoirSamplingBuffer(max_size=mem_size)
    if policy == "experience_balanced":
        return ExperienceBalancedBuffer(max_size=mem_size, adaptive_size=True)
    if scenario == "task_incremental":
        return TaskClassBalancedBuffer(max_size=mem_size, adaptive_size=True)
    return ClassBalancedBuffer(max_size=mem_size, adaptive_size=True)
