"""Strategies on generative backbones: which registered strategies the generative loop runs, and how.

Each entry maps a registered strategy name (its typed config is parsed by the main registry) to a
builder of generative plugins and, for adapter strategies, a model preparation. A strategy absent from
``GENERATIVE`` is refused on ``causal_lm`` and ``seq2seq`` backbones with the reason in ``REFUSED``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from cl_harness.strategies.generative import agem, der, ewc, lora, lwf, replay

BACKBONE_KINDS = ("encoder", "causal_lm", "seq2seq")
ENCODER_ONLY = ("encoder",)
GENERATIVE_ONLY = ("causal_lm", "seq2seq")


@dataclass(frozen=True)
class GenerativeEntry:
    """How the generative loop runs one strategy."""

    build: Callable[[object, object], list]
    prepare_model: Callable[[object, object, int], None] | None = None


def no_plugins(config, context) -> list:
    return []


GENERATIVE: dict[str, GenerativeEntry] = {
    "naive": GenerativeEntry(no_plugins),
    "joint": GenerativeEntry(no_plugins),
    "cumulative": GenerativeEntry(no_plugins),
    "zero_shot": GenerativeEntry(no_plugins),
    "in_context": GenerativeEntry(no_plugins),
    "replay": GenerativeEntry(replay.build),
    "ewc": GenerativeEntry(ewc.build),
    "lwf": GenerativeEntry(lwf.build),
    "der": GenerativeEntry(der.build),
    "agem": GenerativeEntry(agem.build),
    "seq_lora": GenerativeEntry(no_plugins, lora.prepare_seq),
    "inc_lora": GenerativeEntry(lora.build_inc, lora.prepare_per_task),
    "o_lora": GenerativeEntry(lora.build_o, lora.prepare_per_task),
}

REFUSED: dict[str, str] = {
    "si": "its Avalanche plugin tracks the classifier's parameters; not ported to the generative loop (use ewc)",
    "mas": "its Avalanche plugin takes output norms of a classification head; not ported to the generative loop (use ewc)",
    "rwalk": "its Avalanche plugin tracks the classifier's parameters; not ported to the generative loop (use ewc)",
    "lfl": "it distils the encoder's pooled sentence features, which a generative model does not have (use lwf)",
    "gem": "one quadratic program per past task over every LM parameter; not ported (use agem)",
    "gdumb": "it retrains a classifier from scratch on its memory; not ported to the generative loop (use replay)",
    "mir": "it ranks memory by the increase of a classification loss; not ported to the generative loop (use replay)",
    "er_ace": "its asymmetric cross-entropy masks classification-head units, which label-text answers do not have",
}
ENCODER_REFUSED: dict[str, str] = {
    "in_context": "demonstrations in the prompt need a generative backbone (backbone.kind: causal_lm or seq2seq)",
}


def backbone_kinds(name: str) -> tuple[str, ...]:
    """The backbone kinds a registered strategy runs on."""
    kinds = () if name in ENCODER_REFUSED else ENCODER_ONLY
    return kinds + (GENERATIVE_ONLY if name in GENERATIVE else ())


def refusal(name: str, kind: str) -> str | None:
    """Why a strategy (or user plugin) cannot run on a backbone kind; None when it can."""
    if kind == "encoder":
        return ENCODER_REFUSED.get(name)
    if name in GENERATIVE:
        return None
    if ":" in name:
        return "user plugins are Avalanche plugins for encoder classifiers; the generative loop cannot call them"
    return REFUSED.get(name, "not ported to the generative loop")
