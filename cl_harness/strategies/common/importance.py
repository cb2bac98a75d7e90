"""Importance-weighted penalties shared by the regularisation strategies (EWC, SI, ...).

The quadratic penalty of Kirkpatrick et al. 2017, "Overcoming catastrophic forgetting in neural networks" (PNAS).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn


def _tensor(value) -> Tensor:
    """A stored anchor or importance as a tensor (Avalanche keeps them as ``ParamData``)."""
    return value if isinstance(value, Tensor) else value.data


def ewc_penalty(model: nn.Module, anchors: Mapping[str, object], importances: Mapping[str, object]) -> Tensor:
    """``sum_k F_k (theta_k - theta*_k)^2`` over the model's parameters that have an anchor; a scalar tensor.

    ``anchors`` and ``importances`` map parameter names to tensors (or ``ParamData``) of the parameter's shape.
    Parameters without an anchor (added after it was taken) do not count.
    """
    penalty = torch.zeros((), device=next(model.parameters()).device)
    for name, param in model.named_parameters():
        if name not in anchors:
            continue
        anchor, importance = _tensor(anchors[name]), _tensor(importances[name])  # each: param.shape
        penalty = penalty + (importance * (param - anchor).pow(2)).sum()
    return penalty
