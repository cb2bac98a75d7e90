"""Masked-language-model tasks on the shared backbone: BERT masking, an MLM head, training and evaluation.

Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding" (NAACL):
15% of the real tokens are chosen; 80% of those become [MASK], 10% a random token, 10% stay.
Pseudo-perplexity: Salazar et al. 2020, "Masked Language Model Scoring" (ACL).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cl_harness.models.classifier import trim_batch

IGNORE = -100  # label of unmasked positions (cross_entropy's ignore_index)


@dataclass(frozen=True)
class MaskingSpec:
    """What masking needs from the tokenizer."""

    mask_id: int
    special_ids: tuple[int, ...]  # never masked ([CLS], [SEP], [PAD], ...)
    vocab_size: int
    mask_probability: float = 0.15


class MaskedLMHead(nn.Module):
    """BERT's prediction head: dense + GELU + LayerNorm, then a decoder tied to the input embeddings."""

    def __init__(self, embeddings: nn.Embedding, hidden: int) -> None:
        super().__init__()
        self.transform = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.LayerNorm(hidden))
        self.embeddings = embeddings  # shared with the encoder: the decoder weight is the embedding table
        self.bias = nn.Parameter(torch.zeros(embeddings.num_embeddings))

    def forward(self, hidden: Tensor) -> Tensor:
        """``(batch, length, hidden) -> (batch, length, vocab)``."""
        return self.transform(hidden) @ self.embeddings.weight.T + self.bias


def mask_tokens(ids: Tensor, attention: Tensor, spec: MaskingSpec, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """BERT masking. ``ids, attention: (batch, length)`` -> ``(masked ids, labels)``, labels ``IGNORE`` where not chosen."""
    device = ids.device
    candidates = attention.bool() & ~torch.isin(ids, torch.tensor(spec.special_ids, device=device))
    draw = torch.rand(ids.shape, generator=generator).to(device)
    chosen = candidates & (draw < spec.mask_probability)  # (batch, length)
    labels = torch.where(chosen, ids, torch.full_like(ids, IGNORE))
    action = torch.rand(ids.shape, generator=generator).to(device)
    random_ids = torch.randint(spec.vocab_size, ids.shape, generator=generator).to(device)
    masked = torch.where(chosen & (action < 0.8), torch.full_like(ids, spec.mask_id), ids)
    masked = torch.where(chosen & (action >= 0.8) & (action < 0.9), random_ids, masked)
    return masked, labels


def token_logits(model, x: Tensor) -> Tensor:
    """MLM logits of a packed batch. ``(batch, 3, length) -> (batch, length, vocab)``."""
    return model.mlm_head(model.hidden_states(x))


def masked_lm_loss(model, x: Tensor, spec: MaskingSpec, generator: torch.Generator | None = None) -> Tensor:
    """Mean cross-entropy over the masked tokens of a packed batch ``(batch, 3, length)``; 0 when none was chosen."""
    x = trim_batch(x)
    masked, labels = mask_tokens(x[:, 0], x[:, 1], spec, generator)
    logits = token_logits(model, torch.stack([masked, x[:, 1], x[:, 2]], dim=1))  # (batch, length, vocab)
    if not bool((labels != IGNORE).any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
