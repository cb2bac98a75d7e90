"""MAS: importance is how sensitive the model's output is to each parameter, measured without labels.

Aljundi, Babiloni, Elhoseiny, Rohrbach & Tuytelaars 2018, "Memory Aware Synapses: Learning what (not) to forget" (ECCV).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from avalanche.training.plugins import MASPlugin

from cl_harness.strategies.common.rng import rng_untouched
from cl_harness.strategies.common.stream import more_tasks_follow
from cl_harness.strategies.registry import ENCODER_ONLY, BuildContext, StrategyInfo


@dataclass
class MASConfig:
    """Memory Aware Synapses: loss + lambda * sum_k Omega_k (theta_k - theta*_k)^2."""

    lambda_reg: float = field(default=100.0, metadata={"help": (
        "lambda, the weight of the penalty. Default 100, not Aljundi et al. 2018's 1: with the importance pass kept out "
        "of the random stream, lambda 1 trained exactly as naive (docs/defaults.md: a small search; 1e4 stops learning)"),
        "ge": 0.0})
    alpha: float = field(
        default=0.5,
        metadata={"help": "Omega <- alpha * Omega_old + (1 - alpha) * Omega_new after each task", "ge": 0.0, "le": 1.0},
    )


class MAS(MASPlugin):
    """Avalanche's MASPlugin, its importance pass leaving the random stream untouched (``lambda_reg: 0`` is naive)."""

    def after_training_exp(self, strategy, **kwargs):
        """The importance pass, except after the stream's last task (no later task is penalised with it)."""
        if not more_tasks_follow(strategy):
            return
        with rng_untouched(strategy.device):
            super().after_training_exp(strategy, **kwargs)


def build(config: MASConfig, context: BuildContext) -> list:
    """Avalanche's MASPlugin, its importance pass kept out of the random stream.

    After each task it averages ``|d ||f(x)||^2 / d theta|`` over the task's training mini-batches
    (``f(x)``: the logits). Logits of masked units are constants (``MASKED_LOGIT``), so they add nothing
    to the gradient: only the units the model has trained on shape the importances.
    """
    return [MAS(lambda_reg=config.lambda_reg, alpha=config.alpha)]


INFO = StrategyInfo(
    name="mas",
    config_cls=MASConfig,
    build=build,
    summary="penalise moving parameters the output is most sensitive to (unsupervised importance)",
    paper="Aljundi et al. 2018 (ECCV)",
    backbone_kinds=ENCODER_ONLY,  # its importances are output norms of a classification head
    naive_prefix_tasks=1,  # the penalty starts at task 2; importances are computed in after_training_exp
    strength=("lambda_reg", ""),
)
