"""Masked-language-model tasks on the shared backbone: BERT masking, an MLM head, training and evaluation.

Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding" (NAACL):
15% of the real tokens are chosen; 80% of those become [MASK], 10% a random token, 10% stay.
Pseudo-perplexity: Salazar et al. 2020, "Masked Language Model Scoring" (ACL).
"""

from __future__ import annotations

import math
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


def train_masked_lm(
    model, optimizer, inputs: Tensor, spec: MaskingSpec, epochs: int, batch_size: int, device, loss_scale=None
) -> float:
    """Train the trainable parameters (backbone as configured + MLM head) on one task's texts; returns the last loss.

    ``loss_scale`` (fp16: the run's DynamicLossScale) scales the loss for backward and unscales the gradients, or drops them on overflow.
    """
    model.train()
    loss = torch.zeros(())
    for _ in range(epochs):
        for index in torch.randperm(len(inputs)).split(batch_size):
            optimizer.zero_grad()
            loss = masked_lm_loss(model, inputs[index].to(device), spec)
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(f"non-finite masked-LM loss ({float(loss)})")
            if loss_scale is None:
                loss.backward()
            else:
                loss_scale.scaled(loss).backward()
                loss_scale.unscale_or_skip(list(model.parameters()))
            optimizer.step()
    return float(loss.detach())


@torch.inference_mode()
def masked_token_accuracy(model, inputs: Tensor, spec: MaskingSpec, batch_size: int, device, seed: int = 0) -> float:
    """Fraction of masked tokens predicted right, under a fixed (seeded) masking of the held-out texts."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    correct = total = 0
    for start in range(0, len(inputs), batch_size):
        x = trim_batch(inputs[start : start + batch_size].to(device))  # (batch, 3, length)
        masked, labels = mask_tokens(x[:, 0], x[:, 1], spec, generator)
        logits = token_logits(model, torch.stack([masked, x[:, 1], x[:, 2]], dim=1))
        chosen = labels != IGNORE
        correct += int((logits.argmax(-1)[chosen] == labels[chosen]).sum())
        total += int(chosen.sum())
    model.train(was_training)
    return correct / total if total else float("nan")


@torch.inference_mode()
def pseudo_perplexity(model, inputs: Tensor, spec: MaskingSpec, batch_size: int, device) -> float:
    """``exp(-mean log p(w_i | text with w_i masked))`` over every real non-special token, one token masked at a time."""
    was_training = model.training
    model.eval()
    total_log_prob, count = 0.0, 0
    special = torch.tensor(spec.special_ids)
    for row in inputs:
        x = trim_batch(row.unsqueeze(0))[0]  # (3, length)
        positions = torch.nonzero(x[1].bool() & ~torch.isin(x[0], special)).flatten()
        for chunk in positions.split(batch_size):
            copies = x.unsqueeze(0).repeat(len(chunk), 1, 1)  # (chunk, 3, length)
            copies[torch.arange(len(chunk)), 0, chunk] = spec.mask_id
            log_probs = token_logits(model, copies.to(device)).log_softmax(-1)  # (chunk, length, vocab)
            picked = log_probs[torch.arange(len(chunk)), chunk.to(device), x[0, chunk].to(device)]
            total_log_prob += float(picked.sum())
            count += len(chunk)
    model.train(was_training)
    return math.exp(-total_log_prob / count) if count else float("nan")
