"""A disk cache of tokenised texts, so a grid re-run or a second invocation skips the tokenizer."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

CACHE_ENV = "CL_HARNESS_CACHE"  # a folder, or "off"
DEFAULT_CACHE = Path("~/.cache/cl-harness/tokens")


def tokenizer_fingerprint(tokenizer) -> str:
    """What decides a tokenizer's output: its class, vocabulary, special tokens and truncation/padding sides."""
    described = {
        "class": type(tokenizer).__name__,
        "vocab": sorted(tokenizer.get_vocab().items()),
        "special": {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())},
        "lower": getattr(tokenizer, "do_lower_case", None),
        "sides": [getattr(tokenizer, "truncation_side", None), getattr(tokenizer, "padding_side", None)],
    }
    return hashlib.sha256(json.dumps(described, default=str).encode()).hexdigest()


def cache_key(texts: list, tokenizer_id: str, max_length: int) -> str:
    """Key of one encoded text list: the texts themselves (pairs included), the tokenizer and the max length."""
    digest = hashlib.sha256(f"{tokenizer_id}\n{max_length}\n".encode())
    digest.update(json.dumps(texts, ensure_ascii=False).encode())
    return digest.hexdigest()


class TokenCache:
    """Encoded ``(n, 3, max_length)`` tensors on disk under ``root``, one file per key; writes are atomic."""

    def __init__(self, root: str | Path, tokenizer) -> None:
        self.root = Path(root).expanduser()
        self.tokenizer_id = tokenizer_fingerprint(tokenizer)
        self.hits = 0
        self.misses = 0

    @classmethod
    def from_environment(cls, tokenizer, environ=os.environ) -> "TokenCache | None":
        """The cache ``$CL_HARNESS_CACHE`` names (default ``~/.cache/cl-harness/tokens``); None when set to ``off``."""
        setting = environ.get(CACHE_ENV, "").strip()
        if setting.lower() == "off":
            return None
        return cls(setting or DEFAULT_CACHE, tokenizer)

    def encode(self, texts: list, max_length: int, encode: Callable[[list, int], Tensor]) -> Tensor:
        """``encode(texts, max_length)``, or its saved result when these texts were encoded before."""
        path = self.root / f"{cache_key(texts, self.tokenizer_id, max_length)}.pt"
        if path.is_file():
            try:
                cached = torch.load(path, weights_only=True)
                if cached.shape == (len(texts), 3, max_length):
                    self.hits += 1
                    return cached
            except Exception:  # noqa: BLE001 - a damaged file is re-encoded and rewritten
                pass
        self.misses += 1
        encoded = encode(texts, max_length)
        self._write(path, encoded)
        return encoded

    def _write(self, path: Path, encoded: Tensor) -> None:
        temporary = None
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=self.root, suffix=".tmp", delete=False) as handle:
                temporary = Path(handle.name)
                torch.save(encoded, handle)
            os.replace(temporary, path)
        except OSError as exc:  # a read-only or full cache disk costs only the speed-up
            if temporary is not None:
                temporary.unlink(missing_ok=True)
            warnings.warn(f"token cache {self.root} not written ({exc}); set {CACHE_ENV}=off to skip it", stacklevel=2)
