"""Dark Experience Replay (DER / DER++): replay past examples with the logits the model gave them (Buzzega et al. 2020)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from avalanche.core import SupervisedPlugin
from avalanche.models import avalanche_forward
from torch import Tensor

from cl_harness.models.classifier import MASKED_LOGIT
from cl_harness.strategies.registry import BuildContext, StrategyInfo


@dataclass
class DERConfig:
    """Memory size, the weights of the logit and label replay terms, and the replay batch size."""

    mem_size: int = field(default=200, metadata={"help": "examples kept in the reservoir memory", "ge": 1})
    alpha: float = field(default=0.3, metadata={"help": (
        "weight of the MSE between current and stored logits (Buzzega et al. 2020's DER++ setting alpha 0.3, "
        "beta 0.5; docs/defaults.md)"), "ge": 0.0})
    beta: float = field(default=0.5, metadata={"help": "weight of the replayed-label cross-entropy (0: DER, >0: DER++)", "ge": 0.0})
    replay_batch_size: int | None = field(
        default=None, metadata={"help": "memory examples per replay term (default: the training batch size)", "ge": 1}
    )


class ReservoirBuffer:
    """Reservoir sampling over a stream of examples, each a set of named tensors (Vitter 1985).

    After ``seen`` examples each one is in memory with probability ``mem_size / seen``; the
    memory never holds more than ``mem_size`` examples. Tensors are stored as given.
    """

    def __init__(self, mem_size: int) -> None:
        self.mem_size = mem_size
        self.seen = 0
        self.fields: dict[str, Tensor] = {}  # name -> (mem_size, *example shape)

    def __len__(self) -> int:
        return min(self.seen, self.mem_size)

    def add(self, **batch: Tensor) -> None:
        """Offer every example of a batch (all tensors share the first dimension) to the memory."""
        batch = {name: value.detach() for name, value in batch.items()}
        if not self.fields:
            self.fields = {
                name: value.new_empty((self.mem_size, *value.shape[1:])) for name, value in batch.items()
            }
        size = len(next(iter(batch.values())))
        for row in range(size):
            if self.seen < self.mem_size:
                slot = self.seen
            else:
                slot = int(torch.randint(0, self.seen + 1, (1,)))
            self.seen += 1
            if slot < self.mem_size:
                for name, value in batch.items():
                    self.fields[name][slot] = value[row]

    def sample(self, size: int) -> dict[str, Tensor]:
        """Up to ``size`` distinct stored examples, drawn uniformly. Each field ``(n, *example shape)``."""
        rows = torch.randperm(len(self))[:size]
        return {name: stored[rows.to(stored.device)] for name, stored in self.fields.items()}


def masked_logit_mse(output: Tensor, stored: Tensor) -> Tensor:
    """Mean squared error over the units that were active when ``stored`` was recorded.

    ``output`` and ``stored`` are ``(n, width)``. Masked units (class-incremental classes not yet
    seen, task-incremental units beyond a task's head) hold MASKED_LOGIT and are left out: pulling
    a now-active unit back to -1e4 would swamp the loss and is not knowledge worth keeping.
    """
    active = stored > MASKED_LOGIT / 2  # (n, width)
    if not bool(active.any()):
        return output.sum() * 0.0
    return (output - stored)[active].pow(2).mean()


class DERPlugin(SupervisedPlugin):
    """Adds ``alpha * MSE(model(x_m), z_m) + beta * CE(model(x_m'), y_m')`` on memory batches before each backward."""

    def __init__(self, mem_size: int, alpha: float, beta: float, replay_batch_size: int) -> None:
        super().__init__()
        self.buffer = ReservoirBuffer(mem_size)
        self.alpha = alpha
        self.beta = beta
        self.replay_batch_size = replay_batch_size

    def _forward(self, strategy, batch: dict[str, Tensor]) -> Tensor:
        return avalanche_forward(strategy.model, batch["inputs"], batch["task_labels"])  # (n, width)

    def before_backward(self, strategy, **kwargs):
        if len(self.buffer) == 0:
            return
        if self.alpha > 0:
            batch = self.buffer.sample(self.replay_batch_size)
            strategy.loss = strategy.loss + self.alpha * masked_logit_mse(self._forward(strategy, batch), batch["logits"])
        if self.beta > 0:
            batch = self.buffer.sample(self.replay_batch_size)
            strategy.loss = strategy.loss + self.beta * strategy._criterion(self._forward(strategy, batch), batch["targets"])

    def after_training_iteration(self, strategy, **kwargs):
        """Offer the current minibatch to the memory with the logits of this step's forward pass."""
        self.buffer.add(
            inputs=strategy.mb_x,  # (batch, 3, length)
            targets=strategy.mb_y,  # (batch,)
            task_labels=strategy.mb_task_id,  # (batch,)
            logits=strategy.mb_output,  # (batch, width)
        )


def build(config: DERConfig, context: BuildContext) -> list:
    return [DERPlugin(config.mem_size, config.alpha, config.beta, config.replay_batch_size or context.batch_size)]


INFO = StrategyInfo(
    name="der",
    config_cls=DERConfig,
    build=build,
    summary="dark experience replay: match stored logits (alpha) and, for DER++, stored labels (beta) on a reservoir memory",
    paper="Buzzega et al. 2020, Dark Experience for General Continual Learning: a Strong, Simple Baseline (NeurIPS)",
)
