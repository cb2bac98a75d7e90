"""IncLoRA: a new LoRA adapter per task on the frozen backbone, earlier adapters frozen (dynamic architecture).

Baseline of Wang et al. 2023, "Orthogonal Subspace Learning for Language Model Continual Learning" (EMNLP Findings).
All trained adapters are summed at test time; in a task-incremental stream the task label picks its own adapter.
"""

from __future__ import annotations

from dataclasses import dataclass

from avalanche.core import SupervisedPlugin

from cl_harness.models.lora import train_only_adapter
from cl_harness.strategies.registry import BuildContext, StrategyInfo
from cl_harness.strategies.seq_lora import LoRAConfig, add_adapters


@dataclass
class IncLoRAConfig(LoRAConfig):
    """One LoRA adapter per task; the same options as seq_lora."""


class TaskAdapters(SupervisedPlugin):
    """Before each task, make only that task's adapter trainable (the heads stay trainable)."""

    def __init__(self, by_task_label: bool) -> None:
        super().__init__()
        self.by_task_label = by_task_label  # task-incremental: adapter = task label; else adapter = training position

    def adapter_index(self, strategy) -> int:
        if self.by_task_label:
            return int(strategy.experience.task_label)
        return strategy.clock.train_exp_counter  # tasks already trained

    def before_training_exp(self, strategy, **kwargs):
        train_only_adapter(strategy.model, self.adapter_index(strategy))


def prepare_model(config: IncLoRAConfig, model, context: BuildContext) -> None:
    add_adapters(config, model, context.num_tasks)
    model.route_by_task = context.scenario == "task_incremental"


def build(config: IncLoRAConfig, context: BuildContext) -> list:
    return [TaskAdapters(by_task_label=context.scenario == "task_incremental")]


INFO = StrategyInfo(
    name="inc_lora",
    config_cls=IncLoRAConfig,
    build=build,
    summary="a new LoRA adapter per task, earlier ones frozen; the task label picks the adapter in task-IL",
    paper="IncLoRA baseline in Wang et al. 2023 (EMNLP Findings)",
    prepare_model=prepare_model,
)
