"""Dynamic loss scaling for fp16 training (Micikevicius et al., 2018, "Mixed Precision Training")."""

from __future__ import annotations

import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor, nn


class DynamicLossScale:
    """Multiply the loss by ``scale`` so that small fp16 gradients do not underflow, and undo it on the gradients.

    A step whose gradients hold inf or NaN is skipped (no parameter or optimizer state moves) and
    the scale is halved; after ``growth_interval`` finite steps in a row it doubles.
    """

    def __init__(self, initial: float = 2.0**16, growth_interval: int = 2000, minimum: float = 1.0) -> None:
        self.scale = initial
        self.growth_interval = growth_interval
        self.minimum = minimum
        self.finite_steps = 0
        self.skipped_steps = 0

    def scaled(self, loss: Tensor) -> Tensor:
        return loss * self.scale

    @torch.no_grad()
    def unscale_or_skip(self, parameters: list[nn.Parameter]) -> bool:
        """Divide the gradients by the scale; on inf/NaN drop them all (the optimizer then skips the step). Returns whether they were finite."""
        grads = [p.grad for p in parameters if p.grad is not None]
        if not grads:
            return True
        for grad in grads:
            grad.mul_(1.0 / self.scale)
        finite = bool(torch.stack([grad.isfinite().all() for grad in grads]).all())  # one device sync a step
        if finite:
            self.finite_steps += 1
            if self.finite_steps == self.growth_interval:
                self.scale, self.finite_steps = self.scale * 2.0, 0
            return True
        for param in parameters:
            param.grad = None  # optimizers leave parameters without gradients, and their state, untouched
        self.scale, self.finite_steps = max(self.scale / 2.0, self.minimum), 0
        self.skipped_steps += 1
        return False

    def state_dict(self) -> dict:
        return {"scale": self.scale, "finite_steps": self.finite_steps, "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: dict) -> None:
        self.scale, self.finite_steps, self.skipped_steps = state["scale"], state["finite_steps"], state["skipped_steps"]


class LossScaling(SupervisedPlugin):
    """Scale the loss just before backward and unscale the gradients just after: last in the plugin list.

    Being last, it scales the loss with every plugin's penalty already added, and every plugin's
    ``before_update`` sees true gradients. Plugins that rewrite gradients in ``after_backward``
    (A-GEM, GEM) see them scaled; their projections are linear, so the result is the same.
    """

    def __init__(self, loss_scale: DynamicLossScale) -> None:
        super().__init__()
        self.loss_scale = loss_scale
        self.unscaled_loss: Tensor | None = None

    def before_backward(self, strategy, **kwargs):
        self.unscaled_loss = strategy.loss
        strategy.loss = self.loss_scale.scaled(strategy.loss)

    def after_backward(self, strategy, **kwargs):
        strategy.loss, self.unscaled_loss = self.unscaled_loss, None  # what the progress bar and loggers read
        self.loss_scale.unscale_or_skip(list(strategy.model.parameters()))
