"""Tiny generative backbones for tests: a random Llama and a random T5 with a word-level tokenizer built here."""

from __future__ import annotations

from pathlib import Path

import yaml

from cl_harness.config.instruction import DEFAULT_TEMPLATE
from conftest import write_experiment

TEMPLATE_WORDS = DEFAULT_TEMPLATE.replace("{text}", "").replace("{labels}", "")
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


def word_tokenizer(words: list[str], pad: bool = True):
    """A lower-casing word-level PreTrainedTokenizerFast over ``words`` (plus the default template's words)."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    extra = set(pre_tokenizers.Whitespace().pre_tokenize_str(TEMPLATE_WORDS.lower()) and
                [w for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(TEMPLATE_WORDS.lower())])
    from cl_harness.data.demo import DEMO_LABELS

    known = set(words) | extra | set(DEMO_LABELS) | {",", "."}
    vocab = {token: i for i, token in enumerate(SPECIALS + sorted(known - set(SPECIALS)))}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.normalizer = normalizers.Lowercase()
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    specials = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
    if pad:
        specials["pad_token"] = "<pad>"
    return PreTrainedTokenizerFast(tokenizer_object=backend, **specials)


def build_tiny_llama(directory: Path, words: list[str], pad: bool = True, context: int = 256, hidden: int = 32) -> Path:
    """Save a random 2-layer Llama and its word-level tokenizer into ``directory``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = word_tokenizer(words, pad)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=context,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_tiny_t5(directory: Path, words: list[str], hidden: int = 32) -> Path:
    """Save a random 2-layer T5 (encoder-decoder) and its word-level tokenizer into ``directory``."""
    import torch
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = word_tokenizer(words)
    torch.manual_seed(0)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=hidden, d_kv=hidden // 2, d_ff=2 * hidden, num_layers=2, num_decoder_layers=2,
        num_heads=2, pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    T5ForConditionalGeneration(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_generative_experiment(directory: Path, backbone: Path | str, kind: str, strategies: list, tasks: int = 3,
                                per_class: int = 20, instruction: dict | None = None, scenario: str = "class_incremental",
                                **training) -> Path:
    """A stream of ``tasks`` two-topic demo tasks and an experiment on a generative backbone, in ``directory``."""
    from cl_harness.data.demo import DEMO_LABELS

    stream = {
        "name": "tiny-generative",
        "scenario": scenario,
        "tasks": [
            {
                "name": f"t{i + 1}",
                "source": {"type": "demo", "seed": i, "train_examples_per_class": per_class, "test_examples_per_class": 10},
                "classes": DEMO_LABELS[:2] if scenario == "domain_incremental" else DEMO_LABELS[2 * i : 2 * i + 2],
                **({"instruction": instruction} if instruction else {}),
            }
            for i in range(tasks)
        ],
    }
    (directory / "stream.yaml").write_text(yaml.safe_dump(stream, sort_keys=False))
    training = {"device": "cpu", **training}
    return write_experiment(directory, backbone, strategies, name="tiny-generative", backbone_fields={"kind": kind}, **training)


def run_generative(path: Path, keep: bool = True, folder: Path | None = None):
    """Check, tokenise and run the first planned run of an experiment file; ``(result, run)`` with ``keep``.

    ``run`` is the one TrainingRun every backbone kind trains through: ``run.model``, ``run.plugins``, ``run.strategy``.
    """
    from cl_harness.config.loader import load_experiment
    from cl_harness.grid.prepare import check_experiment, prepare_experiment
    from cl_harness.runner.run import TrainingRun

    prepared = prepare_experiment(check_experiment(load_experiment(path)))
    plan = prepared.run_plan(prepared.runs[0])
    run = TrainingRun(plan, show_progress=False, folder=folder)
    result = run.execute()
    return (result, run) if keep else result
