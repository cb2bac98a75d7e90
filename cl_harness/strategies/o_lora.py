"""O-LoRA: a new LoRA adapter per task whose A matrix is kept orthogonal to the earlier tasks' A matrices.

Wang et al. 2023, "Orthogonal Subspace Learning for Language Model Continual Learning" (EMNLP Findings).
Loss: ``CE + lambda1 * sum_layers sum_{i<t} sum_{j,k} |(A_i A_t^T)_{jk}| + lambda2 * sum_layers (||A_t||^2 + ||B_t||^2)``;
all adapters are summed at test time (task-agnostic inference).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor, nn

from cl_harness.models.lora import lora_layers, orthogonality_loss
from cl_harness.strategies.common.lora import LoRAConfig, TaskAdapters, add_adapters
from cl_harness.strategies.registry import BuildContext, StrategyInfo


@dataclass
class OLoRAConfig(LoRAConfig):
    """O-LoRA: the seq_lora options plus the weights of the orthogonality and L2 terms."""

    orthogonal_lambda: float = field(default=0.5, metadata={"ge": 0.0, "help": "lambda1: weight of the orthogonality loss on A"})
    l2_lambda: float = field(default=0.0, metadata={"ge": 0.0, "help": "lambda2: weight of the L2 penalty on the new adapter"})


def o_lora_penalty(model: nn.Module, task: int, orthogonal_lambda: float, l2_lambda: float) -> Tensor:
    """The O-LoRA regulariser of adapter ``task`` summed over every LoRA layer; a scalar tensor."""
    layers = lora_layers(model)
    total = layers[0].lora_a[task].new_zeros(())
    for layer in layers:
        current = layer.lora_a[task]  # (rank, in)
        if orthogonal_lambda > 0 and task > 0:
            total = total + orthogonal_lambda * orthogonality_loss([layer.lora_a[i].detach() for i in range(task)], current)
        if l2_lambda > 0:
            total = total + l2_lambda * (current.pow(2).sum() + layer.lora_b[task].pow(2).sum())
    return total


class OrthogonalAdapters(TaskAdapters):
    """TaskAdapters plus the O-LoRA regulariser on the loss of every minibatch."""

    def __init__(self, orthogonal_lambda: float, l2_lambda: float) -> None:
        super().__init__(by_task_label=False)
        self.orthogonal_lambda = orthogonal_lambda
        self.l2_lambda = l2_lambda

    def before_backward(self, strategy, **kwargs):
        task = self.adapter_index(strategy)
        strategy.loss += o_lora_penalty(strategy.model, task, self.orthogonal_lambda, self.l2_lambda)


def prepare_model(config: OLoRAConfig, model, context: BuildContext) -> None:
    add_adapters(config, model, context.num_tasks)


def build(config: OLoRAConfig, context: BuildContext) -> list:
    return [OrthogonalAdapters(config.orthogonal_lambda, config.l2_lambda)]


INFO = StrategyInfo(
    name="o_lora",
    config_cls=OLoRAConfig,
    build=build,
    summary="a new LoRA adapter per task, its subspace kept orthogonal to the earlier ones' (loss on the A matrices)",
    paper="Wang et al. 2023, Orthogonal Subspace Learning for Language Model Continual Learning (EMNLP Findings)",
    prepare_model=prepare_model,
    per_task_modules=True,
    naive_prefix_tasks=0,  # inserts LoRA adapters before training
    strength=("orthogonal_lambda", ""),
)
