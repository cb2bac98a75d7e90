"""RWalk: EWC++ Fisher plus a path score of how much each parameter's moves reduced the loss.

Chaudhry, Dokania, Ajanthan & Torr 2018, "Riemannian Walk for Incremental Learning:
Understanding Forgetting and Intransigence" (ECCV).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from avalanche.training.plugins import RWalkPlugin
from avalanche.training.utils import ParamData, copy_params_dict, zerolike_params_dict

from cl_harness.strategies.registry import ENCODER_ONLY, BuildContext, StrategyInfo


@dataclass
class RWalkConfig:
    """Riemannian Walk: loss + lambda * sum_k (F_k + s_k) (theta_k - theta*_k)^2, F and s each scaled to [0, 1]."""

    ewc_lambda: float = field(default=10.0, metadata={"help": (
        "lambda, the weight of the penalty. Default 10, not the paper's 0.1: with importances scaled to [0, 1] and "
        "fine-tuning step sizes, 0.1 left the accuracy matrix identical to naive's (docs/defaults.md: a small search; "
        "1000 stops learning)"), "ge": 0.0})
    ewc_alpha: float = field(
        default=0.9,
        metadata={"help": "EWC++ moving average: F <- alpha * F_step + (1 - alpha) * F", "ge": 0.0, "le": 1.0},
    )
    delta_t: int = field(default=10, metadata={"help": "training steps between two path-score checkpoints", "ge": 1})


class RWalk(RWalkPlugin):
    """Avalanche's RWalkPlugin with three fixes for the harness.

    1. ``before_training_iteration`` computes the plain-loss gradient with ``model.eval()`` and never
       switches back, so the rest of training ran without dropout; the training mode is now restored.
    2. Score checkpoints fell on ``clock.train_iterations % delta_t`` (a counter over all tasks), so a
       task with fewer than ``delta_t`` steps got no score at all, and the steps since the last checkpoint
       of every task were dropped. Windows now count steps within the task and the last, partial window
       is scored at the end of the task.
    3. The scores and the Fisher were divided by their maxima even when these were 0, which made every
       penalty NaN (``0 / 0``); a term whose maximum is not positive now contributes nothing.
    """

    def __init__(self, ewc_lambda: float = 10.0, ewc_alpha: float = 0.9, delta_t: int = 10) -> None:
        super().__init__(ewc_lambda=ewc_lambda, ewc_alpha=ewc_alpha, delta_t=delta_t)
        self.window_steps = 0  # steps since the last score checkpoint, within the current task

    def before_training_exp(self, strategy, *args, **kwargs):
        self.checkpoint_loss = zerolike_params_dict(strategy.model)
        self.checkpoint_params = copy_params_dict(strategy.model)
        self.window_steps = 0

    def before_training_iteration(self, strategy, *args, **kwargs):
        was_training = strategy.model.training
        super().before_training_iteration(strategy, *args, **kwargs)
        strategy.model.train(was_training)

    def after_training_iteration(self, strategy, *args, **kwargs):
        self._update_loss(strategy)
        self.window_steps += 1
        if self.window_steps >= self.delta_t:
            self._close_window(strategy)

    def _close_window(self, strategy) -> None:
        """Add the window's scores ``s_{t1}^{t2}`` and start a new window here."""
        self._update_score(strategy)
        self.checkpoint_loss = zerolike_params_dict(strategy.model)
        self.checkpoint_params = copy_params_dict(strategy.model)
        self.window_steps = 0

    @torch.no_grad()
    def after_training_exp(self, strategy, *args, **kwargs):
        if self.window_steps:
            self._close_window(strategy)
        assert self.iter_importance is not None
        self.exp_importance = self.iter_importance
        self.exp_params = copy_params_dict(strategy.model)
        if self.exp_scores is None:
            self.exp_scores = self.checkpoint_scores
        else:  # the score of a parameter is averaged over the tasks
            self.exp_scores = {
                name: ParamData(name, device=score.device, init_tensor=0.5 * (self.exp_scores[name].expand(score.shape) + score.data))
                for name, score in self.checkpoint_scores.items()
                if name in self.exp_scores
            }
        scores = {name: F.relu(score.data) for name, score in self.exp_scores.items()}  # negative scores do not count
        max_score = max(float(s.max()) for s in scores.values())
        max_importance = max(float(imp.data.max()) for imp in self.exp_importance.values())
        self.exp_penalties = {}
        for name, score in scores.items():
            if name not in self.exp_importance:
                continue  # no gradient for this parameter in the task
            importance = self.exp_importance[name].data
            penalty = torch.zeros_like(importance)
            if max_importance > 0:
                penalty += importance / max_importance
            if max_score > 0:
                penalty += score.expand(importance.shape) / max_score
            self.exp_penalties[name] = ParamData(name, device=importance.device, init_tensor=penalty)
        self.checkpoint_scores = zerolike_params_dict(strategy.model)


def build(config: RWalkConfig, context: BuildContext) -> list:
    return [RWalk(ewc_lambda=config.ewc_lambda, ewc_alpha=config.ewc_alpha, delta_t=config.delta_t)]


INFO = StrategyInfo(
    name="rwalk",
    config_cls=RWalkConfig,
    build=build,
    summary="EWC++ Fisher plus a path-integral score of each parameter's contribution to earlier tasks",
    paper="Chaudhry et al. 2018 (ECCV)",
    backbone_kinds=ENCODER_ONLY,  # its path integral tracks a classification head's parameters
    naive_prefix_tasks=0,  # records the parameter trajectory and gradients during task 1
    strength=("ewc_lambda", ""),
)
