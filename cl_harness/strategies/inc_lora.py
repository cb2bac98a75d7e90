"""IncLoRA: a new LoRA adapter per task on the frozen backbone, earlier adapters frozen (dynamic architecture).

Baseline of Wang et al. 2023, "Orthogonal Subspace Learning for Language Model Continual Learning" (EMNLP Findings).
All trained adapters are summed at test time; in a task-incremental stream the task label picks its own adapter.
"""

from __future__ import annotations

from dataclasses import dataclass

from cl_harness.strategies.common.lora import LoRAConfig, TaskAdapters, add_adapters
from cl_harness.strategies.registry import BuildContext, StrategyInfo


@dataclass
class IncLoRAConfig(LoRAConfig):
    """One LoRA adapter per task; the same options as seq_lora."""


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
    per_task_modules=True,
    naive_prefix_tasks=0,  # inserts LoRA adapters before training
)
