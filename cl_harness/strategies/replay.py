"""Experience replay: a bounded memory of past examples mixed into every training minibatch (Chaudhry et al. 2019, "On Tiny Episodic Memories in Continual Learning")."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

from avalanche.benchmarks.utils import _taskaware_classification_subset
from avalanche.training.plugins import ReplayPlugin
from avalanche.training.storage_policy import (
    ClassBalancedBuffer,
    ExemplarsBuffer,
    ExperienceBalancedBuffer,
    ReservoirSamplingBuffer,
)

from cl_harness.strategies.registry import BuildContext, StrategyInfo


@dataclass
class ReplayConfig:
    """Memory size, how the memory is shared out, and how many memory examples join each minibatch."""

    mem_size: int = field(default=200, metadata={"help": "examples kept in the replay memory", "ge": 1})
    policy: Literal["reservoir", "class_balanced", "experience_balanced"] = field(
        default="reservoir",
        metadata={"help": "reservoir: uniform over all examples seen; class_balanced / experience_balanced: equal shares"},
    )
    replay_batch_size: int | None = field(
        default=None, metadata={"help": "memory examples added to each minibatch (default: the training batch size)", "ge": 1}
    )


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


def build(config: ReplayConfig, context: BuildContext) -> list:
    """Avalanche's ReplayPlugin over the chosen storage policy; the memory is updated after each task."""
    storage = make_storage_policy(config.policy, config.mem_size, context.scenario)
    return [
        ReplayPlugin(
            mem_size=config.mem_size,
            batch_size=context.batch_size,
            batch_size_mem=config.replay_batch_size or context.batch_size,
            storage_policy=storage,
        )
    ]


INFO = StrategyInfo(
    name="replay",
    config_cls=ReplayConfig,
    build=build,
    summary="experience replay: each minibatch is joined by examples from a bounded memory of past tasks",
    paper="Chaudhry et al. 2019, On Tiny Episodic Memories in Continual Learning (arXiv:1902.10486)",
)
