"""SeqLoRA: one LoRA adapter on the frozen backbone, trained through the whole stream (the SeqLoRA baseline).

Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models" (ICLR); as a continual baseline in
Wang et al. 2023, "Orthogonal Subspace Learning for Language Model Continual Learning" (EMNLP Findings).
"""

from __future__ import annotations

from cl_harness.strategies.common.lora import LoRAConfig, add_adapters
from cl_harness.strategies.registry import BuildContext, StrategyInfo


def prepare_model(config: LoRAConfig, model, context: BuildContext) -> None:
    add_adapters(config, model, 1)


def build(config: LoRAConfig, context: BuildContext) -> list:
    """No plugins: the base loop trains the single adapter and the heads."""
    return []


INFO = StrategyInfo(
    name="seq_lora",
    config_cls=LoRAConfig,
    build=build,
    summary="one LoRA adapter on the frozen backbone, fine-tuned task after task",
    paper="Hu et al. 2022 (ICLR); baseline in Wang et al. 2023 (EMNLP Findings)",
    prepare_model=prepare_model,
    naive_prefix_tasks=0,  # inserts LoRA adapters before training
)
