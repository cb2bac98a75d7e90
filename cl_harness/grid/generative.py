"""Checks and tokenising of an experiment on a generative backbone (instruction tasks on a causal or seq2seq LM)."""

from __future__ import annotations

from cl_harness.config.loader import LoadedExperiment
from cl_harness.data.instruction import EncodedInstructionTask, InstructionSettings, encode_instruction_tasks
from cl_harness.strategies.generative import refusal
from cl_harness.strategies.registry import StrategySpec


def check_backbone_kind(loaded: LoadedExperiment, strategies: list[StrategySpec]) -> None:
    """Refuse a strategy (or one of its plugins) that cannot run on ``backbone.kind``, with the reason."""
    kind = loaded.config.backbone.kind
    if kind == "encoder":
        for index, task in enumerate(loaded.stream.config.tasks):
            if task.instruction is not None:
                raise loaded.stream.source.error(
                    ("tasks", index, "instruction"), "applies to generative backbones only; the experiment's backbone.kind is encoder",
                    hint="set backbone.kind: causal_lm or seq2seq, or remove the instruction block",
                )
    for index, spec in enumerate(strategies):
        for plugin in spec.plugins:
            reason = refusal(plugin.name, kind)
            if reason:
                raise loaded.source.error(
                    ("strategies", index), f"strategy {plugin.name!r} cannot run on backbone.kind {kind}: {reason}",
                    hint="`cl-harness strategies` lists the backbone kinds of each strategy",
                )
    in_context = {(p.config.shots, p.config.seed) for s in strategies for p in s.plugins if p.name == "in_context"}
    if len(in_context) > 1:
        raise loaded.source.error(("strategies",), "give every in_context strategy the same shots and seed")


def check_generative_backbone(loaded: LoadedExperiment) -> None:
    """A generative backbone takes LoRA through the LoRA strategies, not backbone.peft."""
    if loaded.config.backbone.peft.method != "none":
        raise loaded.source.error(
            ("backbone", "peft", "method"), "generative backbones take LoRA through the seq_lora / inc_lora / o_lora strategies",
            hint="remove backbone.peft and list e.g. {o_lora: {lora_rank: 8}} under strategies",
        )


def encode_generative(checked) -> list[EncodedInstructionTask]:
    """Prompt/answer rows of every task of a CheckedExperiment (with in-context prompts when an in_context strategy
    is listed), tokenised once and kept in ``checked.generative_encoded``."""
    if checked.generative_encoded is not None:
        return checked.generative_encoded
    loaded = checked.loaded
    shots = [(p.config.shots, p.config.seed) for s in checked.strategies for p in s.plugins if p.name == "in_context"]
    settings = InstructionSettings(
        configs=[t.instruction for t in loaded.stream.config.tasks],
        source=loaded.stream.source,
        max_text_tokens=loaded.config.training.max_length,
        context=checked.generative_context,
        seq2seq=loaded.config.backbone.kind == "seq2seq",
        shots=shots[0][0] if shots else 0,
        seed=shots[0][1] if shots else 0,
    )
    checked.generative_encoded = encode_instruction_tasks(checked.tasks, checked.space, checked.tokenizer, settings)
    return checked.generative_encoded
