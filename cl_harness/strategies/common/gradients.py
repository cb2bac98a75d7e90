"""Gradient helpers shared by the gradient-projection strategies (GEM, A-GEM)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def materialise_reference_grads(model: nn.Module, reference: Tensor) -> None:
    """Give a zero ``.grad`` to every parameter the current loss did not reach but the reference gradient did.

    ``reference`` is the flat ``(n_parameters,)`` gradient in ``model.parameters()`` order. Avalanche's
    projection writes only into existing ``.grad`` tensors, so without this the component of the
    projected gradient on, say, an old task's head (task-incremental: the current loss never reaches
    it) is dropped, and the applied update can still increase the memory loss.
    """
    offset = 0
    for param in model.parameters():
        size = param.numel()
        if param.grad is None and param.requires_grad and bool(reference[offset : offset + size].any()):
            param.grad = torch.zeros_like(param)
        offset += size
