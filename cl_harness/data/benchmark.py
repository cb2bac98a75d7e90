"""Turn cut tasks into the scenario's label space and Avalanche experiences."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from avalanche.benchmarks.scenarios.dataset_scenario import benchmark_from_datasets
from avalanche.benchmarks.scenarios.task_aware import with_task_labels
from avalanche.benchmarks.utils import _make_taskaware_classification_dataset
from torch import Tensor
from torch.utils.data import Dataset

from cl_harness.data.tasks import TaskData


@dataclass
class LabelSpace:
    """Where each task's labels land in the model's output units."""

    scenario: str
    task_labels: list[list[str]]  # per task, its label names
    shared: list[str]  # the single head's units (class/domain-incremental); tasks sharing a name share a unit

    @classmethod
    def build(cls, scenario: str, tasks: list[TaskData]) -> "LabelSpace":
        shared: list[str] = []
        for task in tasks:
            shared.extend(name for name in task.label_names if name not in shared)
        return cls(scenario, [list(t.label_names) for t in tasks], shared)

    @property
    def head_sizes(self) -> list[int]:
        if self.scenario == "task_incremental":
            return [len(names) for names in self.task_labels]
        return [len(self.shared)]

    def targets(self, task_index: int, local_labels: list[int]) -> Tensor:
        """Output-unit index of each example's label. ``(n,)``; all 0 for an mlm task (no labels)."""
        if self.scenario == "task_incremental" or not self.task_labels[task_index]:
            return torch.as_tensor(local_labels, dtype=torch.long)
        names = self.task_labels[task_index]
        lookup = [self.shared.index(name) for name in names]
        return torch.as_tensor([lookup[label] for label in local_labels], dtype=torch.long)


class PackedDataset(Dataset):
    """``(inputs, target)`` pairs over packed token tensors; a target is a class unit or (generative) its answer ids."""

    def __init__(self, inputs: Tensor, targets: Tensor) -> None:
        self.inputs = inputs  # (n, 3, max_length)
        self.targets = targets  # (n,) units, or (n, max_length) answer ids

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        target = self.targets[index]
        return self.inputs[index], (int(target) if target.dim() == 0 else target)


@dataclass
class EncodedTask:
    """One task, tokenised: train and test tensors with targets in the label space."""

    name: str
    index: int
    train_inputs: Tensor  # (n_train, 3, max_length)
    train_targets: Tensor  # (n_train,)
    test_inputs: Tensor  # (n_test, 3, max_length)
    test_targets: Tensor  # (n_test,)
    kind: str = "classification"  # its task kind (cl_harness/tasks/)
    valid_inputs: Tensor | None = None  # (n_valid, 3, max_length); None without a validation split
    valid_targets: Tensor | None = None  # (n_valid,)

    def avalanche_dataset(self, split: str = "train"):
        """A task-aware Avalanche dataset (``task_set`` works, as LwF needs)."""
        inputs, targets = (
            (self.train_inputs, self.train_targets) if split == "train" else (self.test_inputs, self.test_targets)
        )
        return _make_taskaware_classification_dataset(
            PackedDataset(inputs, targets), targets=targets.tolist(), task_labels=[self.index] * len(targets)
        )


def make_benchmark(tasks: list[EncodedTask]):
    """An Avalanche benchmark with one experience per task, task labels attached."""
    train = [task.avalanche_dataset("train") for task in tasks]
    test = [task.avalanche_dataset("test") for task in tasks]
    return with_task_labels(benchmark_from_datasets(train=train, test=test))
