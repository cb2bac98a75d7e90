"""Tokenise texts once into packed ``(n, 3, max_length)`` tensors: input ids, attention mask, token types."""

from __future__ import annotations

import torch
from torch import Tensor


def encode_texts(tokenizer, texts: list, max_length: int, chunk_size: int = 1024) -> Tensor:
    """Tokenise single texts or ``(text, text)`` pairs. Returns ``(n, 3, max_length)`` int64."""
    chunks = []
    for start in range(0, len(texts), chunk_size):
        part = texts[start : start + chunk_size]
        if part and isinstance(part[0], (tuple, list)):
            firsts, seconds = [p[0] for p in part], [p[1] for p in part]
            enc = tokenizer(firsts, seconds, truncation=True, max_length=max_length, padding="max_length")
        else:
            enc = tokenizer(list(part), truncation=True, max_length=max_length, padding="max_length")
        ids = torch.tensor(enc["input_ids"], dtype=torch.long)  # (chunk, max_length)
        mask = torch.tensor(enc["attention_mask"], dtype=torch.long)
        types = torch.tensor(enc["token_type_ids"], dtype=torch.long) if "token_type_ids" in enc else torch.zeros_like(ids)
        chunks.append(torch.stack([ids, mask, types], dim=1))  # (chunk, 3, max_length)
    if not chunks:
        return torch.zeros((0, 3, max_length), dtype=torch.long)
    return torch.cat(chunks)


def lengths(inputs: Tensor) -> Tensor:
    """Number of real tokens per example. ``(n, 3, length) -> (n,)``."""
    return inputs[:, 1].sum(dim=1)
