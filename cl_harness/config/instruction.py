"""Schema of a task's ``instruction`` block: how a classification task reads as prompt -> label text.

Used when the experiment's backbone is generative (``backbone.kind: causal_lm | seq2seq``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cl_harness.config.yaml_io import KeyPath, Source
from cl_harness.errors import clip

DEFAULT_TEMPLATE = "Classify the text into one of: {labels}.\nText: {text}\nAnswer:"
TEMPLATE_FIELDS = ("text", "labels")


@dataclass
class InstructionConfig:
    """A per-task prompt template and the label texts (verbalisers) the model answers with."""

    template: str = field(default=DEFAULT_TEMPLATE, metadata={"help": "prompt with {text} and optionally {labels}"})
    label_texts: dict[str, str] | list[str] | None = field(
        default=None, metadata={"help": "answer text per label (a list in label order, or label -> text); default: the names"}
    )
    exact_match: bool = field(default=False, metadata={"help": "also log free-generation exact match (em/<task>)"})

    def check(self, source: Source, path: KeyPath) -> None:
        check_template(self.template, source, path + ("template",))
        texts = list(self.label_texts.values()) if isinstance(self.label_texts, dict) else (self.label_texts or [])
        keys = list(self.label_texts) if isinstance(self.label_texts, dict) else range(len(texts))
        seen: dict[str, object] = {}
        for key, text in zip(keys, texts):
            if not text.strip():
                raise source.error(path + ("label_texts", key), "a label text must not be empty")
            if text.strip() in seen:
                raise source.error(path + ("label_texts", key), f"label text {text!r} is also given for {seen[text.strip()]!r}")
            seen[text.strip()] = key


def check_template(template: str, source: Source, path: KeyPath) -> None:
    """A template must hold ``{text}`` and no other field than ``{text}`` and ``{labels}``."""
    import string

    try:
        parts = [(name, spec, conversion) for _, name, spec, conversion in string.Formatter().parse(template) if name is not None]
    except ValueError as exc:
        raise source.error(path, f"not a valid template ({exc}); write literal braces as {{{{ and }}}}") from None
    for name, spec, conversion in parts:  # checked before {text} is looked for: '{text.upper}' holds no {text}
        if name not in TEMPLATE_FIELDS or spec or conversion:
            written = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
            raise source.error(path, f"unknown template field {clip(written, 60)}; allowed: exactly {{text}} and {{labels}}, "
                               "without attributes, indexes, conversions or format specs",
                               hint="write literal braces as {{ and }}")
    if "text" not in [name for name, _, _ in parts]:
        raise source.error(path, "the template must contain {text} (where the example's text goes)")
