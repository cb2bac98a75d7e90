"""SeqLoRA, IncLoRA and O-LoRA on a generative backbone's attention projections.

Hu et al. 2022, "LoRA" (ICLR); Wang et al. 2023, "Orthogonal Subspace Learning for Language Model
Continual Learning" (EMNLP Findings), whose T5 setting this is: all adapters summed at inference.
"""

from __future__ import annotations

from torch import Tensor

from cl_harness.errors import ConfigError
from cl_harness.models.lora import inject_lora, train_only_adapter
from cl_harness.strategies.generative.base import GenerativePlugin, Learner
from cl_harness.strategies.o_lora import o_lora_penalty

ENCODER_DEFAULT_TARGETS = ["query", "value"]
ATTENTION_TARGETS = (["q_proj", "v_proj"], ["q", "v"])  # Llama / SmolLM2 / Qwen / OPT; T5


def linear_names(model) -> set[str]:
    import torch

    return {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)}


def target_modules(config, model) -> list[str]:
    """The configured targets; the encoder default (query, value) becomes the LM's query/value attention projections."""
    if list(config.target_modules) != ENCODER_DEFAULT_TARGETS:
        return list(config.target_modules)
    names = linear_names(model.lm)
    for candidate in ATTENTION_TARGETS:
        if set(candidate) <= names:
            return candidate
    raise ConfigError(
        "cannot find the attention query/value projections of this generative backbone",
        key="strategies.target_modules",
        hint=f"name its linear layers in target_modules; it has: {', '.join(sorted(names))}",
    )


def add_generative_adapters(config, model, num_adapters: int) -> None:
    """Insert LoRA adapters into the LM (frozen), adapter 0 trainable."""
    targets = target_modules(config, model)
    if inject_lora(model.lm, targets, num_adapters, config.lora_rank, config.lora_alpha, config.lora_dropout) == 0:
        raise ConfigError(f"no linear layer of the backbone is named any of {targets}", key="strategies.target_modules")
    train_only_adapter(model, 0)


class TaskAdapter(GenerativePlugin):
    """Before each task, only that task's adapter trains (IncLoRA)."""

    def before_task(self, learner: Learner) -> None:
        train_only_adapter(learner.model, learner.position)


class OrthogonalTaskAdapter(TaskAdapter):
    """IncLoRA plus O-LoRA's orthogonality (and L2) term on the current adapter."""

    def __init__(self, orthogonal_lambda: float, l2_lambda: float) -> None:
        self.orthogonal_lambda = orthogonal_lambda
        self.l2_lambda = l2_lambda

    def penalty(self, learner: Learner, x: Tensor, y: Tensor, logits: Tensor) -> Tensor | None:
        return o_lora_penalty(learner.model, learner.position, self.orthogonal_lambda, self.l2_lambda)


def prepare_seq(config, model, num_tasks: int) -> None:
    add_generative_adapters(config, model, 1)


def prepare_per_task(config, model, num_tasks: int) -> None:
    add_generative_adapters(config, model, num_tasks)


def build_inc(config, context) -> list:
    return [TaskAdapter()]


def build_o(config, context) -> list:
    return [OrthogonalTaskAdapter(config.orthogonal_lambda, config.l2_lambda)]
