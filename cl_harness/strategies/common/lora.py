"""LoRA adapters shared by the parameter-efficient strategies (seq_lora, inc_lora, o_lora).

Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models" (ICLR).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from avalanche.core import SupervisedPlugin

from cl_harness.config.yaml_io import KeyPath, Source
from cl_harness.errors import ConfigError
from cl_harness.models.lora import DEFAULT_TARGETS, default_targets, inject_lora, linear_names, train_only_adapter


@dataclass
class LoRAConfig:
    """LoRA adapters on the frozen backbone: ``W x + (alpha / r) B A x`` on each target linear layer."""

    lora_rank: int = field(default=8, metadata={"ge": 1, "help": "rank r of each adapter"})
    lora_alpha: float = field(default=16.0, metadata={"gt": 0.0, "help": "the update is scaled by alpha / r"})
    lora_dropout: float = field(default=0.0, metadata={"ge": 0.0, "lt": 1.0, "help": "dropout on the adapter input"})
    target_modules: list[str] | None = field(default=None, metadata={"help": (
        "attribute names of the linear layers to adapt; default: the backbone family's attention query and value "
        "projections (" + "; ".join(f"{family}: {', '.join(names)}" for family, names in DEFAULT_TARGETS.items()) + ")")})

    def check(self, source: Source, path: KeyPath) -> None:
        if self.target_modules is not None and not self.target_modules:
            raise source.error(path + ("target_modules",), "list at least one module name, e.g. [query, value]")


def resolve_targets(config: LoRAConfig, layer_names: set[str]) -> list[str]:
    """The configured target modules, or the backbone family's query/value projections among ``layer_names``."""
    targets = config.target_modules or default_targets(layer_names)
    if targets is None:
        raise ConfigError(
            "cannot find the attention query/value projections of this backbone",
            key="strategies.target_modules",
            hint=f"name its linear layers in target_modules; it has: {', '.join(sorted(layer_names))}",
        )
    return list(targets)


def add_adapters(config: LoRAConfig, model, num_adapters: int) -> None:
    """Insert ``num_adapters`` LoRA adapters into the model's backbone, freeze the backbone, train adapter 0."""
    targets = resolve_targets(config, linear_names(model.encoder))
    adapted = inject_lora(model.encoder, targets, num_adapters, config.lora_rank, config.lora_alpha, config.lora_dropout)
    if adapted == 0:
        raise ConfigError(
            f"no linear layer of the backbone is named any of {targets}",
            key="strategies.target_modules",
            hint="BERT-style encoders name them query, key, value, dense",
        )
    train_only_adapter(model, 0)


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
