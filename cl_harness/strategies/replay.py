"""Experience replay: a bounded memory of past examples mixed into every training minibatch (Chaudhry et al. 2019, "On Tiny Episodic Memories in Continual Learning")."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from avalanche.training.plugins import ReplayPlugin

from cl_harness.strategies.common.buffers import TaskClassBalancedBuffer, make_storage_policy  # noqa: F401 - checkpoints pickle the buffer under this module
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
    naive_prefix_tasks=1,  # the memory is empty on task 1 (the default loader); it is filled in after_training_exp
)
