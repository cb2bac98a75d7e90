"""Checks for a strategy, the ones cl-harness runs on its own: ``check_strategy(MY_STRATEGY)`` in a test of yours.

On tiny models built from a config (no download) of every backbone kind the strategy declares (a BERT, a Llama,
a T5) and a generated three-task stream, it checks that the strategy
trains every task to a matrix of accuracies in [0, 1]; that its state survives a checkpoint and resume (stopped
after task 1 and resumed, it ends with the uninterrupted run's matrix); that at its defaults it changes training
(its matrix differs from naive's; on a tiny language model, whose accuracy can sit at chance, its weights); and, when it declares ``naive_prefix_tasks``, that it trains task 1 as naive does.
A failed check raises ``StrategyCheckError`` saying which and why. Also here: the tiny-model and stream builders the
project's own tests use.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from avalanche.core import SupervisedPlugin

from cl_harness.config.schema import did_you_mean, parse
from cl_harness.config.yaml_io import Source
from cl_harness.errors import ConfigError, error_line
from cl_harness.strategies.registry import PluginSpec, StrategyInfo, info_problem

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CHECKED_KINDS = ("encoder", "causal_lm", "seq2seq")  # the backbone kinds the kit builds tiny models of


class StrategyCheckError(AssertionError):
    """A strategy failed one of ``check_strategy``'s checks."""


@dataclass
class StrategyCheck:
    """What ``check_strategy`` found: the matrices it compared (rows: after each task; columns: tasks)."""

    name: str
    matrix: list[list[float]]
    naive_matrix: list[list[float]]
    resumed_matrix: list[list[float]] | None  # None where there is no step to resume after (joint, zero_shot)
    unchecked_kinds: list[str] = field(default_factory=list)  # declared backbone kinds the kit has no tiny model of


# --- tiny models and streams ------------------------------------------------------------------------------------


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
    """Every word of the generated demo sentences (seeds 0-2): the vocabulary a tiny model needs for demo streams."""
    from cl_harness.data.demo import DEMO_LABELS, generate_demo_rows

    words: set[str] = set()
    for split in ("train", "test"):
        for seed in range(3):
            for row in generate_demo_rows(DEMO_LABELS, 60, seed, split):
                words.update(re.findall(r"\w+|[^\w\s]", row["text"].lower()))
    return sorted(words)


def write_demo_stream(directory: Path, scenario: str = "class_incremental", per_class: int = 20, tasks: int = 2) -> Path:
    """A small generated stream, ``stream.yaml`` in ``directory``: ``tasks`` tasks of two demo topics each."""
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


LM_SPECIALS = ["<pad>", "<unk>", "<s>", "</s>"]


def word_tokenizer(words: list[str], pad: bool = True):
    """A lower-casing word-level PreTrainedTokenizerFast over ``words`` (plus the default template's words)."""
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    from cl_harness.config.instruction import DEFAULT_TEMPLATE
    from cl_harness.data.demo import DEMO_LABELS

    template_words = DEFAULT_TEMPLATE.replace("{text}", "").replace("{labels}", "").lower()
    known = set(words) | {w for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(template_words)} | set(DEMO_LABELS) | {",", "."}
    vocab = {token: i for i, token in enumerate(LM_SPECIALS + sorted(known - set(LM_SPECIALS)))}
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


# --- the checks ---------------------------------------------------------------------------------------------------


class _Stopped(Exception):
    """Raised by StopBeforeTask2 to stop a run the way a killed process stops: after a checkpoint, mid-run."""


class StopBeforeTask2(SupervisedPlugin):
    """Stops the run before task 2 the first time (``marker`` does not exist yet), never once resumed."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker = marker

    def before_training_exp(self, strategy, **kwargs):
        if strategy.clock.train_exp_counter == 1 and not Path(self.marker).exists():
            Path(self.marker).touch()
            raise _Stopped


@dataclass
class _StopConfig:
    marker: str = ""


def _build_stop(config: _StopConfig, context) -> list:
    return [StopBeforeTask2(config.marker)]


_STOP = StrategyInfo(name="stop_before_task_2", config_cls=_StopConfig, build=_build_stop, summary="stops a run before task 2, once")


def _same(a: list[list[float]], b: list[list[float]]) -> bool:
    return len(a) == len(b) and all(len(x) == len(y) and all(abs(u - v) <= 1e-9 for u, v in zip(x, y)) for x, y in zip(a, b))


def _same_weights(model, other) -> bool:
    """Whether two models hold the same weights: a tiny language model's accuracy can sit at chance whatever trained it."""
    mine, theirs = model.state_dict(), other.state_dict()
    return mine.keys() == theirs.keys() and all(mine[k].shape == theirs[k].shape and bool((mine[k] == theirs[k]).all()) for k in mine)


def _fail(name: str, what: str) -> StrategyCheckError:
    return StrategyCheckError(f"strategy {name!r}: {what}")


def check_strategy(strategy: StrategyInfo | str, params: dict[str, Any] | None = None, folder: Path | None = None) -> StrategyCheck:
    """Check ``strategy`` (a StrategyInfo, or the name of a built-in or installed one) with ``params`` (default: its
    defaults) as cl-harness checks its own; ``folder`` keeps the tiny model, stream and runs (default: a temporary one)."""
    if folder is None:
        with tempfile.TemporaryDirectory(prefix="cl-harness-check-") as tmp:
            return check_strategy(strategy, params, Path(tmp))
    from cl_harness.strategies import default_registry

    registry = default_registry()
    if isinstance(strategy, str):
        if strategy not in registry:
            raise StrategyCheckError(f"no strategy named {strategy!r}; registered: {', '.join(registry.names())}"
                                     + (f" ({did_you_mean(strategy, registry.names())})" if did_you_mean(strategy, registry.names()) else ""))
        info = registry.get(strategy)
    else:
        problem = info_problem(strategy)
        if problem:
            raise StrategyCheckError(f"not a usable StrategyInfo: {problem}")
        info = strategy
        if info.name not in registry:
            registry.register(info)
        elif registry.get(info.name) is not info:
            raise _fail(info.name, "a registered strategy has this name; give yours another")
    try:  # the params as given, before they are written into the check's own experiment file
        parse(info.config_cls, dict(params or {}), Source(None, {}), ("params",))
    except ConfigError as exc:
        raise _fail(info.name, f"its params are refused: {exc.key + ': ' if exc.key else ''}{exc.message}"
                    + (f" ({exc.hint})" if exc.hint else "")) from None
    kinds = [kind for kind in info.backbone_kinds if kind in CHECKED_KINDS]
    if not kinds:
        raise _fail(info.name, f"it declares backbone kinds {list(info.backbone_kinds)}; the kit checks {list(CHECKED_KINDS)} only")
    checked = [_check_on_kind(info, params or {}, Path(folder) / kind, registry, kind) for kind in kinds]
    return StrategyCheck(info.name, *checked[0], unchecked_kinds=[k for k in info.backbone_kinds if k not in CHECKED_KINDS])


TINY_MODELS = {"encoder": build_tiny_bert, "causal_lm": build_tiny_llama, "seq2seq": build_tiny_t5}


def _check_on_kind(info: StrategyInfo, params: dict, folder: Path, registry, kind: str):
    """The checks on a tiny model of one backbone kind (BERT, Llama, T5): (its matrix, naive's, the resumed one's)."""
    from cl_harness.config.loader import load_experiment
    from cl_harness.grid.prepare import check_experiment, prepare_experiment
    from cl_harness.runner.run import TrainingRun, train_and_evaluate

    name = info.name
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / f"tiny-{kind}"
    if not (model / "config.json").is_file():
        TINY_MODELS[kind](model, demo_words())
    write_demo_stream(folder, info.scenarios[0], per_class=32, tasks=3)  # enough for the tiny model to learn each task
    fields = {"pooling": "mean"} if kind == "encoder" else {"kind": kind}
    path = write_experiment(folder, model, ["naive", {name: params}], name=f"check-{name}", backbone_fields=fields, epochs=2,
                            lr=3e-3, **({} if kind == "encoder" else {"batch_size": 4}))
    prepared = prepare_experiment(check_experiment(load_experiment(path), registry), cache=None)
    naive, planned = prepared.runs[0], prepared.runs[1]

    def run(strategy, run_folder: Path | None = None):
        return train_and_evaluate(prepared.run_plan(replace(planned, strategy=strategy)), None, False, run_folder)

    naive_run, strategy_run = TrainingRun(prepared.run_plan(naive), None, False), TrainingRun(prepared.run_plan(planned), None, False)
    reference = naive_run.execute()
    try:
        result = strategy_run.execute()
    except Exception as exc:  # noqa: BLE001 - whatever the strategy's code raises is the finding
        raise _fail(name, f"its run on a tiny {kind} model raised {error_line(exc)}") from exc
    if result.status != "FINISHED":
        raise _fail(name, f"its run on a tiny {kind} model failed: {result.error}")
    steps = 1 if info.train_data in ("joint", "none") else len(prepared.task_names)
    if len(result.matrix) != steps or not all(0.0 <= v <= 1.0 for row in result.matrix for v in row):
        raise _fail(name, f"its accuracy matrix should have {steps} rows of fractions in [0, 1]; got {result.matrix}")
    if name != "naive" and _same(result.matrix, reference.matrix) and (kind == "encoder" or _same_weights(strategy_run.model, naive_run.model)):
        raise _fail(name, f"at these parameters ({params or 'its defaults'}) it trains exactly as naive does (same accuracy "
                    "matrix): do its hooks run and change training? Are its defaults strong enough to act?")
    if info.naive_prefix_tasks and not _same(result.matrix[:1], reference.matrix[:1]):
        raise _fail(name, f"it declares naive_prefix_tasks={info.naive_prefix_tasks}, but its task-1 row {result.matrix[0]} "
                    f"differs from naive's {reference.matrix[0]}: something it does acts on task 1")
    if steps == 1:
        return result.matrix, reference.matrix, None
    run_folder = folder / "resumed"
    stop = PluginSpec(_STOP.name, _StopConfig(str(folder / "stopped")), _STOP)
    stopping = replace(planned.strategy, plugins=[*planned.strategy.plugins, stop])
    try:
        stopped = run(stopping, run_folder)
    except _Stopped:
        stopped = None
    except Exception as exc:  # noqa: BLE001 - whatever the strategy's code raises is the finding
        raise _fail(name, f"its run with a checkpoint after each task raised {error_line(exc)}") from exc
    if stopped is not None and stopped.status != "FINISHED":  # e.g. state that cannot be pickled into the checkpoint
        raise _fail(name, f"its run with a checkpoint after each task failed: {stopped.error}")
    if stopped is not None:
        raise _fail(name, "the run meant to stop before task 2 went on (does the strategy train tasks in its own loop?)")
    try:
        resumed = run(stopping, run_folder)
    except Exception as exc:  # noqa: BLE001 - whatever resuming raises is the finding
        raise _fail(name, f"resuming from the checkpoint after task 1 failed: {type(exc).__name__}: {exc}") from exc
    if not _same(resumed.matrix, result.matrix):
        raise _fail(name, f"stopped after task 1 and resumed, it ends with {resumed.matrix}, not the uninterrupted {result.matrix}: "
                    "some of its state is not in the checkpoint (keep it on the plugin object, which is pickled whole)")
    return result.matrix, reference.matrix, resumed.matrix
