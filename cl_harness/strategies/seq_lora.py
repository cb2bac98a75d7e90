"""SeqLoRA: one LoRA adapter on the frozen backbone, trained through the whole stream (the SeqLoRA baseline).

Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models" (ICLR); as a continual baseline in
Wang et al. 2023, "Orthogonal Subspace Learning for Language Model Continual Learning" (EMNLP Findings).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cl_harness.config.yaml_io import KeyPath, Source
from cl_harness.errors import ConfigError
from cl_harness.models.lora import inject_lora, train_only_adapter
from cl_harness.strategies.registry import BuildContext, StrategyInfo


@dataclass
class LoRAConfig:
    """LoRA adapters on the frozen backbone: ``W x + (alpha / r) B A x`` on each target linear layer."""

    lora_rank: int = field(default=8, metadata={"ge": 1, "help": "rank r of each adapter"})
    lora_alpha: float = field(default=16.0, metadata={"gt": 0.0, "help": "the update is scaled by alpha / r"})
    lora_dropout: float = field(default=0.0, metadata={"ge": 0.0, "lt": 1.0, "help": "dropout on the adapter input"})
    target_modules: list[str] = field(
        default_factory=lambda: ["query", "value"], metadata={"help": "attribute names of the linear layers to adapt"}
    )

    def check(self, source: Source, path: KeyPath) -> None:
        if not self.target_modules:
            raise source.error(path + ("target_modules",), "list at least one module name, e.g. [query, value]")


def add_adapters(config: LoRAConfig, model, num_adapters: int) -> None:
    """Insert ``num_adapters`` LoRA adapters into the model's encoder, freeze the encoder, train adapter 0."""
    adapted = inject_lora(model.encoder, config.target_modules, num_adapters, config.lora_rank, config.lora_alpha, config.lora_dropout)
    if adapted == 0:
        raise ConfigError(
            f"no linear layer of the backbone is named any of {config.target_modules}",
            key="strategies.target_modules",
            hint="BERT-style encoders name them query, key, value, dense",
        )
    train_only_adapter(model, 0)


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
)
