"""ER-ACE: experience replay with an asymmetric cross-entropy that keeps new classes from pushing old ones down (Caccia et al. 2022)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from avalanche.core import SupervisedPlugin
from avalanche.models import avalanche_forward
from torch import Tensor

from cl_harness.models.classifier import MASKED_LOGIT
from cl_harness.strategies.common.buffers import ReservoirBuffer
from cl_harness.strategies.registry import ENCODER_ONLY, BuildContext, StrategyInfo


@dataclass
class ERACEConfig:
    """Memory size and the number of memory examples replayed each step."""

    mem_size: int = field(default=200, metadata={"help": "examples kept in the reservoir memory", "ge": 1})
    replay_batch_size: int | None = field(
        default=None, metadata={"help": "memory examples replayed each step (default: the training batch size)", "ge": 1}
    )


class ERACEPlugin(SupervisedPlugin):
    """Current-batch loss over the current task's classes only; replay loss over every class seen.

    The base loop's cross-entropy on the current batch becomes the masked one because the batch's
    logits are masked (to MASKED_LOGIT) outside the current task's classes right after the forward
    pass; the replay cross-entropy on a reservoir memory batch is added before the backward pass.
    The current task's classes are those of the training experience (the paper, in its online
    setting, uses the classes of the incoming minibatch, a subset of these).
    """

    def __init__(self, mem_size: int, replay_batch_size: int) -> None:
        super().__init__()
        self.buffer = ReservoirBuffer(mem_size)
        self.replay_batch_size = replay_batch_size
        self.current_classes: Tensor | None = None  # (n_current,) unit indices

    def before_training_exp(self, strategy, **kwargs):
        classes = sorted(strategy.experience.dataset.targets.uniques)
        self.current_classes = torch.as_tensor(classes, dtype=torch.long, device=strategy.device)

    def after_forward(self, strategy, **kwargs):
        output = strategy.mb_output  # (batch, width)
        current = torch.zeros(output.shape[1], dtype=torch.bool, device=output.device)  # (width,)
        current[self.current_classes] = True
        strategy.mb_output = output.masked_fill(~current, MASKED_LOGIT)

    def before_backward(self, strategy, **kwargs):
        if len(self.buffer) == 0:
            return
        batch = self.buffer.sample(self.replay_batch_size)
        output = avalanche_forward(strategy.model, batch["inputs"], batch["task_labels"])  # (n, width)
        strategy.loss = strategy.loss + strategy._criterion(output, batch["targets"])

    def after_training_iteration(self, strategy, **kwargs):
        self.buffer.add(inputs=strategy.mb_x, targets=strategy.mb_y, task_labels=strategy.mb_task_id)


def build(config: ERACEConfig, context: BuildContext) -> list:
    return [ERACEPlugin(config.mem_size, config.replay_batch_size or context.batch_size)]


INFO = StrategyInfo(
    name="er_ace",
    config_cls=ERACEConfig,
    build=build,
    summary="replay with asymmetric cross-entropy: new data only competes among the current task's classes",
    paper="Caccia et al. 2022, New Insights on Reducing Abrupt Representation Change in Online Continual Learning (ICLR)",
    scenarios=("class_incremental",),
    backbone_kinds=ENCODER_ONLY,  # its asymmetric cross-entropy masks classification-head units
    naive_prefix_tasks=0,  # masks task 1's logits and stores examples during it
)
