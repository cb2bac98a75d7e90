"""Synaptic Intelligence: importance is each parameter's share of the loss decrease along the training path.

Zenke, Poole & Ganguli 2017, "Continual Learning Through Synaptic Intelligence" (ICML).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from avalanche.training.plugins import SupervisedPlugin
from torch import Tensor, nn

from cl_harness.strategies.common.importance import ewc_penalty
from cl_harness.strategies.registry import ENCODER_ONLY, BuildContext, StrategyInfo


@dataclass
class SIConfig:
    """Synaptic Intelligence: the surrogate loss L + c * sum_k Omega_k (theta_k - theta*_k)^2."""

    si_lambda: float = field(default=100.0, metadata={"help": (
        "c, the weight of the surrogate penalty. Default 100, not the paper's 0.1-1 for MNIST MLPs: at fine-tuning step sizes "
        "the parameter moves are tiny, and c = 1 left the accuracy matrix identical to naive's (docs/defaults.md: a small "
        "search; 1e4 stops learning)"), "ge": 0.0})
    eps: float = field(
        default=1.0e-3, metadata={"help": "xi, damping in Omega = omega / (Delta^2 + xi)", "gt": 0.0}
    )


def trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(name, param) for name, param in model.named_parameters() if param.requires_grad]


class SynapticIntelligence(SupervisedPlugin):
    """Path-integral importances, kept on the model's device.

    Written for the harness instead of wrapping Avalanche's SynapticIntelligencePlugin, which on a CPU
    device snapshots parameters with ``param.detach().cpu()`` (a view of the live tensor, not a copy),
    so every parameter change it measures is zero and so are its importances; it also clips importances
    to at most 1e-3 and lets them go negative, which Zenke et al. do not.

    - ``omega``: per task, ``-sum_steps g * Delta_theta``, with ``g`` the gradient of the loss without this
      plugin's own penalty (as in the paper's code), summed over the optimizer steps.
    - ``importances`` (Omega): sum over finished tasks of ``max(omega, 0) / (Delta_task^2 + xi)``; kept
      non-negative so that the penalty stays a convex pull towards the anchor.
    """

    def __init__(self, si_lambda: float = 100.0, eps: float = 1.0e-3) -> None:
        super().__init__()
        self.si_lambda = si_lambda
        self.eps = eps
        self.importances: dict[str, Tensor] = {}  # Omega, each of its parameter's shape
        self.anchors: dict[str, Tensor] = {}  # theta* at the end of the last task
        self.omega: dict[str, Tensor] = {}  # path integral of the current task
        self.task_start: dict[str, Tensor] = {}  # theta at the start of the current task
        self.step_buffers: dict[str, Tensor] = {}  # theta before the optimizer step, then theta_old - theta_new; reused
        self.stepped: list[str] = []  # the parameters with a gradient at this step

    def before_training_exp(self, strategy, **kwargs):
        params = trainable(strategy.model)
        self.task_start = {name: param.detach().clone() for name, param in params}
        self.omega = {name: torch.zeros_like(param) for name, param in params}
        self.step_buffers = {name: torch.empty_like(param) for name, param in params}

    def before_backward(self, strategy, **kwargs):
        if self.importances:
            strategy.loss += self.si_lambda * ewc_penalty(strategy.model, self.anchors, self.importances)

    @torch.no_grad()
    def before_update(self, strategy, **kwargs):
        named = [(n, p) for n, p in trainable(strategy.model) if p.grad is not None and n in self.step_buffers]
        self.stepped = [n for n, _ in named]
        if named:
            torch._foreach_copy_([self.step_buffers[n] for n in self.stepped], [p for _, p in named])

    @torch.no_grad()
    def after_update(self, strategy, **kwargs):
        """``omega -= g * (theta_new - theta_old)``, with ``g`` the gradient less this plugin's penalty, in fused passes."""
        params = dict(strategy.model.named_parameters())
        names = self.stepped
        if not names:
            return
        grads = [params[n].grad for n in names]
        penalised = [i for i, n in enumerate(names) if n in self.importances]
        if penalised:  # remove the gradient of the penalty: g - 2 c Omega (theta_old - theta*)
            correction = torch._foreach_sub([self.step_buffers[names[i]] for i in penalised], [self.anchors[names[i]] for i in penalised])
            torch._foreach_mul_(correction, [self.importances[names[i]] for i in penalised])
            corrected = torch._foreach_add([grads[i] for i in penalised], correction, alpha=-2.0 * self.si_lambda)
            for i, grad in zip(penalised, corrected):
                grads[i] = grad
        moved_back = [self.step_buffers[n] for n in names]
        torch._foreach_sub_(moved_back, [params[n] for n in names])  # theta_old - theta_new
        torch._foreach_addcmul_([self.omega[n] for n in names], grads, moved_back)
        self.stepped = []

    @torch.no_grad()
    def after_training_exp(self, strategy, **kwargs):
        for name, param in trainable(strategy.model):
            if name not in self.omega:
                continue
            moved = param - self.task_start[name]
            gained = self.omega[name].clamp(min=0.0) / (moved.pow(2) + self.eps)
            self.importances[name] = self.importances.get(name, torch.zeros_like(param)) + gained
            self.anchors[name] = param.detach().clone()
        self.omega, self.task_start, self.step_buffers = {}, {}, {}


def build(config: SIConfig, context: BuildContext) -> list:
    return [SynapticIntelligence(si_lambda=config.si_lambda, eps=config.eps)]


INFO = StrategyInfo(
    name="si",
    config_cls=SIConfig,
    build=build,
    summary="penalise moving parameters whose updates reduced the loss of earlier tasks (online path integral)",
    paper="Zenke, Poole & Ganguli 2017 (ICML)",
    backbone_kinds=ENCODER_ONLY,  # its path integral tracks a classification head's parameters
    naive_prefix_tasks=0,  # records the parameter trajectory during task 1
    strength=("si_lambda", "1e4 acted on MiniLM, 151 did not"),
)
