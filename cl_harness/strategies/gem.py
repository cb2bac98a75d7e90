"""GEM: keep the gradient's dot product with every past task's memory gradient non-negative, by a small QP (Lopez-Paz & Ranzato 2017)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from avalanche.training.plugins import GEMPlugin

from cl_harness.strategies.common.gradients import materialise_reference_grads
from cl_harness.strategies.registry import ENCODER_ONLY, BuildContext, StrategyInfo


@dataclass
class GEMConfig:
    """Memory per task and the margin that favours backward transfer."""

    patterns_per_experience: int = field(
        default=64, metadata={"help": "examples kept in memory from each task (all of them enter every step)", "ge": 1}
    )
    memory_strength: float = field(
        default=0.5, metadata={"help": "gamma: margin added to the QP constraints to favour backward transfer", "ge": 0.0}
    )


class HarnessGEMPlugin(GEMPlugin):
    """Avalanche's GEMPlugin (QP through qpsolvers + quadprog), with the projection reaching parameters
    the current loss left without a gradient (an old task's head in task-incremental streams)."""

    @torch.no_grad()
    def after_backward(self, strategy, **kwargs):
        if strategy.clock.train_exp_counter > 0:
            reach = self.G.abs().sum(dim=0)  # (n_parameters,): nonzero where some memory gradient is
            materialise_reference_grads(strategy.model, reach)
        super().after_backward(strategy, **kwargs)


def build(config: GEMConfig, context: BuildContext) -> list:
    return [HarnessGEMPlugin(config.patterns_per_experience, config.memory_strength)]


INFO = StrategyInfo(
    name="gem",
    config_cls=GEMConfig,
    build=build,
    summary="gradient episodic memory: project each gradient (by a QP) so no past task's memory loss increases",
    paper="Lopez-Paz & Ranzato 2017, Gradient Episodic Memory for Continual Learning (NeurIPS)",
    backbone_kinds=ENCODER_ONLY,  # one quadratic program per past task over every parameter: too costly for language models (use agem)
    naive_prefix_tasks=1,  # no constraints on task 1 (train_exp_counter 0); the memory is filled in after_training_exp
)
