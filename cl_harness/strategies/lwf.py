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
    """LwF on any backbone: the outputs the frozen previous model trained are distilled, through the model's
    ``distillation_view`` (models/classifier.py, models/generative.py).

    Avalanche's LwFPlugin cannot be used: it calls ``model(x, None)`` on a ``MultiTaskModule`` and expects one
    output per task, and its teacher is a deep copy left in training mode, so dropout perturbs the soft targets.

    What is distilled (never the masked ``-1e4`` units):

    - class-incremental encoder: the single head's units of the classes seen before this task;
    - domain-incremental encoder: all units of the single head;
    - task-incremental encoder: every unit of the head of each task trained on, on every example of the batch;
    - language model: the vocabulary distribution at every real answer position of the new task's rows.
    """

    def __init__(self, alpha: float = 1.0, temperature: float = 2.0) -> None:
        super().__init__()
        self.alpha = alpha
        self.temperature = temperature
        self.teacher: nn.Module | None = None  # the model after the last task, frozen
        self.old_units: dict = {}  # head index -> the units to distil (model.trained_units)

    def after_training_exp(self, strategy, **kwargs):
        model = strategy.model
        self.teacher = frozen_copy(model)
        self.old_units = {**self.old_units, **model.trained_units(strategy.experience.dataset.targets_task_labels.uniques)}

    def penalty(self, model: nn.Module, x: Tensor, task_labels: Tensor, logits: Tensor) -> Tensor:
        """The distillation term (before ``alpha``) for inputs ``x`` ``(batch, 3, length)`` and the model's ``logits``."""
        if self.teacher is None:
            return logits.new_zeros(())
        student = model.distillation_view(x, task_labels, logits, self.old_units)
        with torch.no_grad():
            teacher = self.teacher.distillation_view(x, task_labels, None, self.old_units)
        total = logits.new_zeros(())
        for student_logits, teacher_logits in zip(student, teacher):  # each (rows, units)
            total = total + distillation_loss(student_logits, teacher_logits, self.temperature)
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
