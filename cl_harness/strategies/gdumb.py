"""GDumb: greedily keep a class-balanced memory and retrain from the initial weights on it alone (Prabhu et al. 2020)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor
from torch.utils.data import DataLoader

from cl_harness.strategies.common.buffers import make_storage_policy
from cl_harness.strategies.registry import ENCODER_ONLY, BuildContext, StrategyInfo


@dataclass
class GDumbConfig:
    """GDumb's one parameter: the memory size."""

    mem_size: int = field(default=200, metadata={"help": "examples in the class-balanced memory the model trains on", "ge": 1})


class GDumbPlugin(SupervisedPlugin):
    """At each task: add its examples to a class-balanced memory, reset the weights, train on the memory only.

    Unlike Avalanche's GDumbPlugin, which swaps ``strategy.model`` for a fresh deep copy (the harness
    evaluates the model object it built, and the optimizer keeps the old parameters), the reset here
    copies the initial weights back in place and clears the optimizer state. The initial weights are
    the pretrained encoder with freshly initialised heads. Buffers such as the seen-class mask are kept.
    """

    def __init__(self, mem_size: int, scenario: str) -> None:
        super().__init__()
        self.storage_policy = make_storage_policy("class_balanced", mem_size, scenario)
        self.initial_weights: dict[str, Tensor] | None = None

    def after_train_dataset_adaptation(self, strategy, **kwargs):
        """Train on the memory, not on the task's data."""
        self.storage_policy.post_adapt(strategy, strategy.experience)
        strategy.adapted_dataset = self.storage_policy.buffer

    @torch.no_grad()
    def before_training_exp(self, strategy, num_workers: int = 0, **kwargs):
        """Reset to the weights of the first task's start (taken then, before any update); load the memory uniformly.

        Avalanche's default loader balances minibatches over task labels and oversamples small
        tasks, which would show some memory examples more often than others in an epoch.
        """
        memory = strategy.adapted_dataset
        collate = getattr(memory, "collate_fn", None)
        strategy.dataloader = DataLoader(
            memory, batch_size=strategy.train_mb_size, shuffle=True, num_workers=num_workers, collate_fn=collate
        )
        params = dict(strategy.model.named_parameters())
        if self.initial_weights is None:
            self.initial_weights = {name: p.detach().clone() for name, p in params.items()}
            return
        for name, param in params.items():
            param.copy_(self.initial_weights[name])
        strategy.optimizer.state.clear()


def build(config: GDumbConfig, context: BuildContext) -> list:
    return [GDumbPlugin(config.mem_size, context.scenario)]


INFO = StrategyInfo(
    name="gdumb",
    config_cls=GDumbConfig,
    build=build,
    summary="greedy class-balanced memory; at each task the model is reset and trained on the memory alone",
    paper="Prabhu et al. 2020, GDumb: A Simple Approach that Questions Our Progress in Continual Learning (ECCV)",
    backbone_kinds=ENCODER_ONLY,  # it retrains a classifier from its memory
    naive_prefix_tasks=0,  # trains on its memory, not on the task
)
