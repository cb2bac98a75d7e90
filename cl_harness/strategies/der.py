"""Dark Experience Replay (DER / DER++): replay past examples with the logits the model gave them (Buzzega et al. 2020)."""

from __future__ import annotations

from dataclasses import dataclass, field

from avalanche.core import SupervisedPlugin
from avalanche.models import avalanche_forward
from torch import Tensor

from cl_harness.strategies.common.buffers import ReservoirBuffer
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


def masked_logit_mse(output: Tensor, stored: Tensor, active: Tensor) -> Tensor:
    """Mean squared error between ``output`` and ``stored`` logits over the ``active`` entries (all three one shape).

    Inactive entries (class-incremental classes not yet seen, units beyond a task's head, answer padding) are left
    out: pulling a now-active unit back to -1e4 would swamp the loss and is not knowledge worth keeping.
    """
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
            output = self._forward(strategy, batch)  # (n, width) or (n, answer, vocab)
            stored = batch["logits"][:, : output.shape[1]]  # a language model's answers: as long as this sample's longest
            active = strategy.model.distillation_mask(stored, batch["inputs"])
            strategy.loss = strategy.loss + self.alpha * masked_logit_mse(output, stored, active)
        if self.beta > 0:
            batch = self.buffer.sample(self.replay_batch_size)
            strategy.loss = strategy.loss + self.beta * strategy._criterion(self._forward(strategy, batch), batch["targets"])

    def after_training_iteration(self, strategy, **kwargs):
        """Offer the current minibatch to the memory with the logits of this step's forward pass."""
        self.buffer.add(
            inputs=strategy.mb_x,  # (batch, 3, length)
            targets=strategy.mb_y,  # (batch,)
            task_labels=strategy.mb_task_id,  # (batch,)
            logits=strategy.mb_output,  # (batch, width), or (batch, answer, vocab) on a language model
        )


def build(config: DERConfig, context: BuildContext) -> list:
    return [DERPlugin(config.mem_size, config.alpha, config.beta, config.replay_batch_size or context.batch_size)]


INFO = StrategyInfo(
    name="der",
    config_cls=DERConfig,
    build=build,
    summary="dark experience replay: match stored logits (alpha) and, for DER++, stored labels (beta) on a reservoir memory",
    paper="Buzzega et al. 2020, Dark Experience for General Continual Learning: a Strong, Simple Baseline (NeurIPS)",
    naive_prefix_tasks=0,  # stores examples and logits after every step of task 1
    strength=("alpha", "0.3 acted on MiniLM"),
)
