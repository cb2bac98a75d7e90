"""An inference-only fast path for scoring on a CPU: the encoder's linear layers run as oneDNN matrix products with
their bias, and the exact GELU that follows a feed-forward layer, fused into the product.

In eager PyTorch a linear layer on the CPU is ``addmm``: the bias is first copied into every row of the output, then
the product is added to it, and the GELU is one more pass over the widest activation of the layer. oneDNN applies
the bias and the GELU in the product's epilogue, while the output is still in cache (the fusions ``torch.compile``'s
CPU backend makes, without its compile time). Scoring needs no autograd, so the swap is made only for the duration
of a scoring pass (:func:`fused_linears`) and the model is given back as it was. docs/benchmarks.md has the
measurements.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

try:
    from transformers.activations import GELUActivation
except ImportError:  # an older transformers: no GELU to fuse, the linear layers still are
    GELUActivation = ()


def _linear_pointwise():
    """oneDNN's fused linear operator, or None where this torch build has none (or the user switched oneDNN off)."""
    if not (torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled):
        return None
    try:
        return torch.ops.mkldnn._linear_pointwise
    except (AttributeError, RuntimeError):
        return None


class FusedLinear(nn.Module):
    """A linear layer as one oneDNN product with its bias and ``activation`` ("none" or "gelu") applied in it."""

    def __init__(self, linear: nn.Linear, activation: str = "none") -> None:
        super().__init__()
        self.linear = linear  # kept: its parameters are the ones used, and it goes back in place afterwards
        self.activation = activation

    def forward(self, hidden: Tensor) -> Tensor:  # (..., in_features) -> (..., out_features)
        return torch.ops.mkldnn._linear_pointwise(hidden, self.linear.weight, self.linear.bias, self.activation, [], "none")


def _exact_gelu(module: nn.Module) -> bool:
    """Whether ``module`` is transformers' exact (erf) GELU, the one oneDNN's "gelu" post-op computes."""
    return bool(GELUActivation) and type(module) is GELUActivation


def can_fuse(encoder: nn.Module) -> bool:
    """Whether the fast path applies: an fp32 encoder on the CPU, made of plain torch and transformers layers only.

    Adapter layers (PEFT, the harness's LoRA) call their base layer their own way, so an encoder holding any is left
    as it is.
    """
    parameter = next(encoder.parameters(), None)
    if parameter is None or parameter.device.type != "cpu" or parameter.dtype != torch.float32 or _linear_pointwise() is None:
        return False
    return not any(type(module).__module__.startswith(("peft", "cl_harness")) for module in encoder.modules())


@contextmanager
def fused_linears(encoder: nn.Module) -> Iterator[int]:
    """Swap the encoder's linear layers for :class:`FusedLinear` while the block runs; yields how many were swapped.

    A linear layer is fused with the exact GELU that a transformers feed-forward block applies after it
    (``dense`` then ``intermediate_act_fn``, as in BERT, RoBERTa or MiniLM); the GELU module is bypassed meanwhile.
    Only for inference: the fused operator has no backward. Nothing is swapped where :func:`can_fuse` is False.
    """
    swapped: list[tuple[nn.Module, str, nn.Module]] = []  # (parent, attribute, original module)
    try:
        if can_fuse(encoder):
            for parent in list(encoder.modules()):
                fuse_gelu = isinstance(getattr(parent, "dense", None), nn.Linear) and _exact_gelu(getattr(parent, "intermediate_act_fn", None))
                for name, child in list(parent.named_children()):
                    if type(child) is nn.Linear:
                        activation = "gelu" if fuse_gelu and name == "dense" else "none"
                        swapped.append((parent, name, child))
                        setattr(parent, name, FusedLinear(child, activation))
                if fuse_gelu:
                    swapped.append((parent, "intermediate_act_fn", parent.intermediate_act_fn))
                    parent.intermediate_act_fn = nn.Identity()
        yield sum(isinstance(getattr(parent, name), FusedLinear) for parent, name, _ in swapped)
    finally:
        for parent, name, original in reversed(swapped):
            setattr(parent, name, original)
