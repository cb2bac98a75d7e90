"""Score generative models on instruction tasks: rank classification, and optionally free-generation exact match.

Rank classification (as in T0 and FLAN evaluation; Sanh et al. 2022, "Multitask Prompted Training Enables
Zero-Shot Task Generalization", ICLR): the prediction is the label whose text has the highest
log-likelihood after the prompt, computed exactly; the sum over answer tokens is used (``normalise``: divided
by the answer length).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from cl_harness.models.generative import trim_answers


@torch.inference_mode()
def label_scores(model, prompts: Tensor, candidates: Tensor, normalise: bool = False) -> Tensor:
    """Log-likelihood of each candidate after each prompt. ``(batch, 3, length), (labels, answer) -> (batch, labels)``.

    The model computes each prompt once and scores every candidate from it (a causal LM's key/value cache,
    a seq2seq model's encoder states): ``labels`` times less prompt compute than one row per pair.
    """
    log_probs, valid = model.candidate_log_likelihoods(prompts, candidates)  # (batch, labels, answer), (labels, answer)
    total = (log_probs * valid).sum(-1)  # (batch, labels)
    return total / valid.sum(-1).clamp(min=1) if normalise else total


@torch.inference_mode()
def rank_classification_hits(
    model,
    inputs: Tensor,
    targets: Tensor,
    candidates: Tensor,
    candidate_units: Tensor,
    batch_size: int,
    device,
    normalise: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> Tensor:
    """Whether each example's best-scoring label text is its label, ``(n,)`` booleans (``batch_size`` counts prompt-label rows)."""
    hits = torch.zeros(len(targets), dtype=torch.bool)
    was_training = model.training
    model.eval()
    prompts_per_batch = max(1, batch_size // len(candidates))
    order = torch.argsort(inputs[:, 1].sum(1), descending=True)  # similar prompt lengths share a batch
    candidates, units = candidates.to(device), candidate_units.to(device)
    for index in order.split(prompts_per_batch):
        scores = label_scores(model, inputs[index].to(device), candidates, normalise)  # (batch, labels)
        hits[index] = (units[scores.argmax(1)] == targets[index].to(device)).cpu()
        if on_batch is not None:
            on_batch(len(index))
    model.train(was_training)
    return hits


def rank_classification_accuracy(model, inputs: Tensor, targets: Tensor, *args, **kwargs) -> float:
    """Fraction of examples whose best-scoring label text is their label (NaN without examples)."""
    if len(targets) == 0:
        return float("nan")
    return int(rank_classification_hits(model, inputs, targets, *args, **kwargs).sum()) / len(targets)


@torch.inference_mode()
def exact_match(model, tokenizer, inputs: Tensor, label_texts: list[str], targets_local: list[int], device, max_new_tokens: int) -> float:
    """Fraction of examples whose greedy generation, stripped, equals their label text (one example at a time)."""
    if len(inputs) == 0:
        return float("nan")
    was_training = model.training
    model.eval()
    hits = 0
    for row, label in zip(inputs, targets_local):
        prompt, mask, _, _ = trim_answers(row.unsqueeze(0))
        prompt = prompt[:, : int(mask.sum())].to(device)
        generated = model.lm.generate(
            input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=max_new_tokens, do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
        )
        new = generated[0] if model.kind == "seq2seq" else generated[0, prompt.shape[1] :]
        hits += int(tokenizer.decode(new, skip_special_tokens=True).strip() == label_texts[label])
    model.train(was_training)
    return hits / len(inputs)
