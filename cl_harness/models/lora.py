"""A minimal multi-adapter LoRA for continual learning: one low-rank update per task on each adapted linear layer.

``peft`` can hold several adapters but activates them by name for the whole model; the continual
strategies (SeqLoRA, IncLoRA, O-LoRA) need all adapters summed, or one chosen per example by its task
label, and the A matrices of each adapter for the orthogonality loss, so they use this module.
Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models" (ICLR).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import Tensor, nn


class LoRALinear(nn.Module):
    """``base(x) + scale * sum_i B_i A_i dropout(x)`` over the adapters; ``route`` picks one adapter per example."""

    def __init__(self, base: nn.Linear, num_adapters: int, rank: int, alpha: float, dropout: float) -> None:
        super().__init__()
        self.base = base
        self.scale = alpha / rank
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_a = nn.ParameterList(
            nn.Parameter(torch.empty(rank, base.in_features)) for _ in range(num_adapters)  # each (rank, in)
        )
        self.lora_b = nn.ParameterList(
            nn.Parameter(torch.zeros(base.out_features, rank)) for _ in range(num_adapters)  # each (out, rank)
        )
        for a in self.lora_a:
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))  # as peft and the LoRA paper: B = 0, so each adapter starts as a no-op
        self.route: Tensor | None = None  # (batch,) adapter index per example, or None to sum all adapters

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, length, in) -> (batch, length, out)``."""
        out = self.base(x)
        x = self.dropout(x)
        if self.route is None:
            for a, b in zip(self.lora_a, self.lora_b):
                out = out + self.scale * (x @ a.T @ b.T)
            return out
        delta = torch.zeros_like(out)
        for index in torch.unique(self.route).tolist():
            rows = self.route == index  # (batch,)
            delta[rows] = self.scale * (x[rows] @ self.lora_a[index].T @ self.lora_b[index].T)
        return out + delta


# The attention query and value projections, by model family: what a LoRA strategy adapts unless told otherwise.
DEFAULT_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "value"],  # BERT, MiniLM, RoBERTa, ...
    "llama": ["q_proj", "v_proj"],  # Llama, SmolLM2, Qwen, Mistral, OPT
    "t5": ["q", "v"],  # T5, Flan-T5
}


def default_targets(layer_names: set[str]) -> list[str] | None:
    """The family's query/value projections among a model's linear-layer names; None when no family matches."""
    for targets in DEFAULT_TARGETS.values():
        if set(targets) <= layer_names:
            return list(targets)
    return None


def linear_names(module: nn.Module) -> set[str]:
    """Attribute names of a module's ``nn.Linear`` layers."""
    return {name.rsplit(".", 1)[-1] for name, child in module.named_modules() if isinstance(child, nn.Linear)}


def inject_lora(encoder: nn.Module, target_modules: list[str], num_adapters: int, rank: int, alpha: float, dropout: float) -> int:
    """Replace every ``nn.Linear`` whose attribute name is in ``target_modules`` by a LoRALinear; freeze the encoder.

    Returns the number of layers adapted.
    """
    for param in encoder.parameters():
        param.requires_grad_(False)
    targets = [
        (parent, name, child)
        for parent in encoder.modules()
        for name, child in parent.named_children()
        if name in target_modules and isinstance(child, nn.Linear)
    ]
    for parent, name, child in targets:
        setattr(parent, name, LoRALinear(child, num_adapters, rank, alpha, dropout).to(child.weight.device))
    return len(targets)


def lora_layers(model: nn.Module) -> list[LoRALinear]:
    return [m for m in model.modules() if isinstance(m, LoRALinear)]


def train_only_adapter(model: nn.Module, index: int) -> None:
    """Make adapter ``index`` of every LoRA layer trainable and freeze the others (the heads are untouched)."""
    for layer in lora_layers(model):
        for i, (a, b) in enumerate(zip(layer.lora_a, layer.lora_b)):
            a.requires_grad_(i == index)
            b.requires_grad_(i == index)


@contextmanager
def routed(model: nn.Module, adapters: Tensor | None):
    """Within the block, example ``k`` passes only through adapter ``adapters[k]`` of every LoRA layer."""
    layers = lora_layers(model)
    for layer in layers:
        layer.route = adapters
    try:
        yield
    finally:
        for layer in layers:
            layer.route = None


def orthogonality_loss(previous: list[Tensor], current: Tensor) -> Tensor:
    """O-LoRA's ``sum_i sum_{j,k} |(A_i A_t^T)_{jk}|`` for one layer; each A is ``(rank, in)``. Wang et al. 2023 (EMNLP Findings)."""
    loss = current.new_zeros(())
    for old in previous:
        loss = loss + (old @ current.T).abs().sum()  # (rank_old, rank_current)
    return loss
