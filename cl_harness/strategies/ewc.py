"""EWC: a quadratic penalty keeps parameters near their old values, weighted by Fisher importance.

Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in neural networks" (PNAS);
online mode: Schwarz et al. 2018, "Progress & Compress: A scalable framework for continual learning" (ICML).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from avalanche.training.plugins import EWCPlugin

from cl_harness.config.yaml_io import KeyPath, Source
from cl_harness.strategies.common.importance import ewc_penalty
from cl_harness.strategies.common.rng import rng_untouched
from cl_harness.strategies.common.stream import more_tasks_follow
from cl_harness.strategies.registry import BuildContext, StrategyInfo


@dataclass
class EWCConfig:
    """Elastic Weight Consolidation, separate (one penalty per past task) or online (one running penalty)."""

    ewc_lambda: float = field(
        default=1000.0, metadata={"help": "weight of the penalty lambda * sum_k F_k (theta_k - theta*_k)^2. Default 1000: a pretrained transformer's "
                                   "Fisher entries are tiny, so EWC needs a large lambda to act at all (Kruengkrai & Yamagishi "
                                   "2022, 'Mitigating the diminishing effect of EWC', COLING). On MiniLM at lr ~1e-4 even 7608 did nothing and 1e9 "
                                   "acted: search 1e5-1e10 (docs/defaults.md)", "ge": 0.0}
    )
    mode: Literal["separate", "online"] = field(
        default="separate",
        metadata={"help": "separate: one anchor and Fisher per past task; online: one, F <- decay * F + F_new"},
    )
    decay: float = field(
        default=1.0,
        metadata={"help": "online mode only: gamma, how much of the old Fisher is kept at each task", "ge": 0.0, "le": 1.0},
    )

    def check(self, source: Source, path: KeyPath) -> None:
        if self.mode == "separate" and self.decay != 1.0:
            raise source.error(path + ("decay",), "applies only to mode: online")


class EWC(EWCPlugin):
    """Avalanche's EWCPlugin (importances, anchors, online update) with the penalty computed by ``ewc_penalty``.

    Importances are Avalanche's: the squared gradient of each training mini-batch's mean loss, averaged
    over the mini-batches, computed with the model in eval mode after each task, without moving the
    random stream (so that ``ewc_lambda: 0`` trains exactly as naive does).
    """

    def after_training_exp(self, strategy, **kwargs):
        """Avalanche's importance pass, leaving the random stream where training left it (``rng_untouched``).

        Skipped after the stream's last task: no later task is penalised with it (and the pass changes nothing else).
        """
        if not more_tasks_follow(strategy):
            return
        with rng_untouched(strategy.device):
            super().after_training_exp(strategy, **kwargs)

    def before_backward(self, strategy, **kwargs):
        finished = strategy.clock.train_exp_counter  # tasks already trained on
        if finished == 0:
            return
        tasks = range(finished) if self.mode == "separate" else [finished - 1]
        penalty = sum(ewc_penalty(strategy.model, self.saved_params[t], self.importances[t]) for t in tasks)
        strategy.loss += self.ewc_lambda * penalty


def build(config: EWCConfig, context: BuildContext) -> list:
    decay = config.decay if config.mode == "online" else None
    return [EWC(ewc_lambda=config.ewc_lambda, mode=config.mode, decay_factor=decay)]


INFO = StrategyInfo(
    name="ewc",
    config_cls=EWCConfig,
    build=build,
    summary="penalise moving parameters that were important (diagonal Fisher) for earlier tasks",
    paper="Kirkpatrick et al. 2017 (PNAS); online: Schwarz et al. 2018 (ICML)",
    naive_prefix_tasks=1,  # the penalty starts at task 2; importances are computed in after_training_exp
    strength=("ewc_lambda", "on MiniLM 1e3 did nothing, 1e6 acted weakly, 1e9 strongly (docs/defaults.md)"),
)
