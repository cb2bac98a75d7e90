"""Shared fixtures: offline mode, a tiny BERT built from a config, the shared benchmark data."""

from __future__ import annotations

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"  # transformers and datasets read this at import
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The token cache goes to a folder of this test session, never to the user's ~/.cache.
os.environ["CL_HARNESS_CACHE"] = tempfile.mkdtemp(prefix="cl-harness-test-cache-")

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


def write_demo_stream(directory: Path, scenario: str = "class_incremental", per_class: int = 20, tasks: int = 2) -> Path:
    """A small generated stream: ``tasks`` tasks of two demo topics each."""
    import yaml

    from cl_harness.data.demo import DEMO_LABELS

    stream = {
        "name": "tiny-demo",
        "scenario": scenario,
        "tasks": [
            {
                "name": f"t{i + 1}",
                "source": {"type": "demo", "seed": i, "train_examples_per_class": per_class, "test_examples_per_class": 10},
                "classes": DEMO_LABELS[:2] if scenario == "domain_incremental" else DEMO_LABELS[2 * i : 2 * i + 2],
            }
            for i in range(tasks)
        ],
    }
    path = directory / "stream.yaml"
    path.write_text(yaml.safe_dump(stream, sort_keys=False))
    return path


def write_experiment(
    directory: Path, backbone: Path | str, strategies: list, *, name: str = "tiny", backbone_fields: dict | None = None, **training
) -> Path:
    """An experiment YAML over ``stream.yaml`` in the same directory, with fast tiny-model settings.

    ``backbone_fields`` go beside the backbone's name (default ``pooling: mean``); ``training`` overrides the settings.
    """
    import yaml

    settings = {"epochs": 1, "batch_size": 8, "eval_batch_size": 32, "lr": 1e-3, "max_length": 24, **training}
    experiment = {
        "name": name,
        "stream": "stream.yaml",
        "backbone": {"name": str(backbone), **(backbone_fields if backbone_fields is not None else {"pooling": "mean"})},
        "training": settings,
        "strategies": strategies,
        "seeds": [0],
        "checkpoint_dir": str(directory / "runs"),
        "checkpoint_every_s": 0,  # a checkpoint after every task, which the resume tests kill runs between
    }
    path = directory / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment, sort_keys=False))
    return path


@pytest.fixture
def tiny_run(tmp_path, tiny_bert):
    """``tiny_run(strategy_entry, scenario=..., **training)`` trains one strategy on a tiny demo stream.

    Returns ``(result, strategy)``: the RunResult (accuracy matrix, metrics) and the Avalanche
    template after training, so tests can inspect plugins. Nothing is written to MLflow.
    """
    from cl_harness.config.loader import load_experiment
    from cl_harness.grid.prepare import check_experiment, prepare_experiment
    from cl_harness.runner.run import TrainingRun

    def run(entry, scenario: str = "class_incremental", per_class: int = 20, tasks: int = 2, **training):
        write_demo_stream(tmp_path, scenario, per_class, tasks)
        path = write_experiment(tmp_path, tiny_bert, [entry], **training)
        prepared = prepare_experiment(check_experiment(load_experiment(path)))
        run = TrainingRun(prepared.run_plan(prepared.runs[0]), show_progress=False)
        return run.execute(), run.strategy

    return run


def pytest_sessionfinish(session, exitstatus):
    """Remove this session's token cache."""
    import shutil

    shutil.rmtree(os.environ["CL_HARNESS_CACHE"], ignore_errors=True)


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread than on two busy ones (no synchronisation between them)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A tiny random Llama and its word-level tokenizer (tests/generative_helpers.py), built once per test module."""
    from generative_helpers import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), demo_words())


def write_config(tmp_path: Path, experiment: str, stream: str) -> Path:
    """``stream`` as stream.yaml and ``experiment`` (dedented) as exp.yaml in ``tmp_path``; the experiment's path."""
    import textwrap

    (tmp_path / "stream.yaml").write_text(stream)
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(experiment))
    return path


def config_error(path: Path, *args, **kwargs):
    """The ConfigError that loading the experiment at ``path`` raises."""
    from cl_harness.config.loader import load_experiment
    from cl_harness.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_experiment(path, *args, **kwargs)
    return info.value
