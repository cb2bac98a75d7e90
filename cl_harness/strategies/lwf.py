"""LwF: the model after the last task is a frozen teacher; its outputs on new data are distilled into the model.

Li & Hoiem 2016, "Learning without Forgetting" (ECCV; TPAMI 2017).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from avalanche.training.plugins import SupervisedPlugin
from torch import Tensor, nn

from cl_harness.strategies.registry import BuildContext, StrategyInfo


@dataclass
class LwFConfig:
    """Learning without Forgetting: loss + alpha * KL(teacher_T || model_T) over the old units."""

    alpha: float = field(default=1.0, metadata={"help": (
        "lambda_o, the weight of the distillation term; 1 with T = 2 as in Li & Hoiem 2017, the setting NLP continual-"
        "learning comparisons reuse (docs/defaults.md)"), "ge": 0.0})
    temperature: float = field(
        default=2.0, metadata={"help": "T, softmax temperature of teacher and model in the distillation", "gt": 0.0}
    )


def distillation_loss(logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """``KL(softmax(teacher / T) || softmax(logits / T))``, averaged over the batch. Both ``(batch, units)``."""
    log_p = torch.log_softmax(logits / temperature, dim=1)  # (batch, units)
    q = torch.softmax(teacher_logits / temperature, dim=1)  # (batch, units)
    return F.kl_div(log_p, q, reduction="batchmean")


def frozen_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode (no dropout) with no parameter requiring a gradient."""
    teacher = copy.deepcopy(model)
    teacher.eval()
    teacher.requires_grad_(False)
    return teacher


class LearningWithoutForgetting(SupervisedPlugin):
    """LwF for the harness's ``TextClassifier``: every old head is distilled on its trained units only.

    Avalanche's LwFPlugin cannot be used with this model: the model is a ``MultiTaskModule``, so the
    plugin calls ``model(x, None)`` and expects one output per task (a dict); it gets a tensor (class-
    and domain-incremental) or an error (task-incremental). Its teacher is also a plain deep copy left
    in training mode, so dropout perturbs the soft targets.

    What is distilled (the units the teacher was trained on, never the masked ``-1e4`` units):

    - class-incremental: the single head's units of the classes seen before this task;
    - domain-incremental: all units of the single head;
    - task-incremental: every unit of the head of each task trained on, on every example of the batch.
    """

    def __init__(self, alpha: float = 1.0, temperature: float = 2.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.temperature = temperature
        self.teacher: nn.Module | None = None  # the model after the last task, frozen
        self.old_units: dict[int, Tensor] = {}  # head index -> indices of the units to distil

    def after_training_exp(self, strategy, **kwargs):
        model = strategy.model
        self.teacher = frozen_copy(model)
        if model.scenario == "task_incremental":
            for task in strategy.experience.dataset.targets_task_labels.uniques:
                self.old_units[int(task)] = torch.arange(model.heads[int(task)].out_features)
        elif model.scenario == "class_incremental":
            self.old_units = {0: model.seen_units.nonzero().flatten().cpu()}
        else:
            self.old_units = {0: torch.arange(model.heads[0].out_features)}

    def penalty(self, model: nn.Module, x: Tensor, task_labels: Tensor, logits: Tensor) -> Tensor:
        """The distillation term (before ``alpha``) for inputs ``x`` ``(batch, 3, length)`` and the model's ``logits``."""
        if self.teacher is None:
            return logits.new_zeros(())
        if model.scenario != "task_incremental":  # one head: the step's own logits are the model's side
            units = self.old_units[0].to(logits.device)
            with torch.no_grad():
                teacher_logits = self.teacher(x, task_labels)  # (batch, width)
            return distillation_loss(logits[:, units], teacher_logits[:, units], self.temperature)
        features = model.encode(x)  # (batch, hidden): the step's forward ran only the current head
        with torch.no_grad():
            teacher_features = self.teacher.encode(x)  # (batch, hidden)
        total = logits.new_zeros(())
        for head in self.old_units:
            teacher_logits = self.teacher.heads[head](teacher_features)  # (batch, head size)
            total = total + distillation_loss(model.heads[head](features), teacher_logits, self.temperature)
        return total

    def before_backward(self, strategy, **kwargs):
        if self.teacher is not None and self.alpha > 0:
            strategy.loss += self.alpha * self.penalty(strategy.model, strategy.mb_x, strategy.mb_task_id, strategy.mb_output)


def build(config: LwFConfig, context: BuildContext) -> list:
    return [LearningWithoutForgetting(alpha=config.alpha, temperature=config.temperature)]


INFO = StrategyInfo(
    name="lwf",
    config_cls=LwFConfig,
    build=build,
    summary="distil the previous model's outputs on the new task's data into the model (no stored data)",
    paper="Li & Hoiem 2016 (ECCV)",
    naive_prefix_tasks=1,  # no teacher before after_training_exp of task 1, so no distillation term on task 1
    strength=("alpha", "1 acted on MiniLM"),
)
