"""Shared fixtures: offline mode, a tiny BERT built from a config, the shared benchmark data."""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # transformers and datasets read this at import
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import re  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def shared_data_dir() -> Path:
    """The real task data beside the repository (``../shared/data/cl_benchmark``), or $CL_BENCHMARK_DIR."""
    return Path(os.environ.get("CL_BENCHMARK_DIR", REPO.parent / "shared" / "data" / "cl_benchmark"))


@pytest.fixture(scope="session")
def benchmark_dir() -> Path:
    path = shared_data_dir()
    if not (path / "README.md").is_file():
        pytest.skip(f"shared benchmark data not found at {path}")
    return path


def build_tiny_bert(directory: Path, words: list[str], hidden: int = 32, layers: int = 2) -> Path:
    """Save a randomly initialised BERT and its word-level tokenizer into ``directory``."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    vocab = {token: i for i, token in enumerate(SPECIALS + sorted(set(words) - set(SPECIALS)))}
    # BertTokenizerFast(vocab_file=...) maps every token to [UNK] in transformers 5; BertTokenizer(vocab=...) works.
    tokenizer = BertTokenizer(vocab=vocab)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=256,
    )
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def demo_words() -> list[str]:
    from cl_harness.data.demo import DEMO_LABELS, generate_demo_rows

    words: set[str] = set()
    for split in ("train", "test"):
        for seed in range(3):
            for row in generate_demo_rows(DEMO_LABELS, 60, seed, split):
                words.update(re.findall(r"\w+|[^\w\s]", row["text"].lower()))
    return sorted(words)


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny BERT (2 layers, hidden 32) whose vocabulary covers the demo sentences."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), demo_words())
