"""Instruction tasks: a classification task cast as prompt -> label text, tokenised for a generative backbone.

Each example becomes a prompt (the task's template with ``{text}`` and ``{labels}`` filled in, inside the
tokenizer's chat template when it has one) and an answer (its label's text, then eos). Packed rows are
``(n, 3, length)``: prompt ids | prompt mask | answer ids, the answer padded with ``IGNORE`` so that the
LM loss falls on answer tokens only.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from torch import Tensor

from cl_harness.config.instruction import InstructionConfig
from cl_harness.config.yaml_io import Source
from cl_harness.data.benchmark import LabelSpace, PackedDataset
from cl_harness.data.tasks import TaskData, lookalike, not_a_label

IGNORE = -100
DEMONSTRATION_SEPARATOR = "\n\n"


@dataclass
class EncodedInstructionTask:
    """One instruction task, tokenised: packed rows, its candidate answers and their output units."""

    name: str
    index: int
    train_inputs: Tensor  # (n_train, 3, length): prompt | mask | answer of the true label
    train_targets: Tensor  # (n_train,) output units
    test_inputs: Tensor  # (n_test, 3, length)
    test_targets: Tensor  # (n_test,)
    candidates: Tensor  # (labels, answer length): each label text's ids, IGNORE-padded
    candidate_units: Tensor  # (labels,): the output unit of each candidate
    label_texts: list[str]
    exact_match: bool = False
    in_context_inputs: Tensor | None = None  # (n_test, 3, length): test prompts with demonstrations
    kind: str = "instruction"
    valid_inputs: Tensor | None = None  # (n_valid, 3, length); None without a validation split
    valid_targets: Tensor | None = None  # (n_valid,)

    def avalanche_dataset(self, split: str = "train"):
        """A task-aware Avalanche dataset whose examples are ``(packed row, answer ids)``, its ``targets`` the output units.

        The loss of a batch reads the answer ids (``GenerativeClassifier.criterion``); memories that balance
        classes read the units.
        """
        from avalanche.benchmarks.utils import _make_taskaware_classification_dataset

        inputs, targets = (self.train_inputs, self.train_targets) if split == "train" else (self.test_inputs, self.test_targets)
        return _make_taskaware_classification_dataset(
            PackedDataset(inputs, inputs[:, 2]), targets=targets.tolist(), task_labels=[self.index] * len(targets)
        )


def label_texts(task: TaskData, config: InstructionConfig | None, source: Source, path: tuple) -> list[str]:
    """The answer text of each of the task's labels, in label order (default: the label names)."""
    given = config.label_texts if config is not None else None
    if given is None:
        return list(task.label_names)
    if isinstance(given, list):
        if len(given) != len(task.label_names):
            raise source.error(
                path + ("label_texts",), f"gives {len(given)} texts for {len(task.label_names)} labels ({', '.join(task.label_names)})"
            )
        return [t.strip() for t in given]
    unknown = [name for name in given if name not in task.label_names]
    if unknown and lookalike(unknown[0], task.label_names) is not None:
        raise source.error(path + ("label_texts", unknown[0]), *not_a_label(unknown[0], task.label_names))
    if unknown:
        raise source.error(path + ("label_texts", unknown[0]), f"no such label; labels: {', '.join(task.label_names)}")
    return [given.get(name, name).strip() for name in task.label_names]


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, template: str, text: str, labels: list[str], demonstrations: list[tuple[str, str]] = ()) -> str:
    """The prompt string: demonstrations (filled template + answer), then the example's filled template, chat-wrapped."""
    options = ", ".join(labels)
    shots = [template.format(text=t, labels=options) + " " + answer for t, answer in demonstrations]
    content = DEMONSTRATION_SEPARATOR.join([*shots, template.format(text=text, labels=options)])
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)
    return content


def as_text(text) -> str:
    """A single text, or a sentence pair joined by a newline."""
    return "\n".join(text) if isinstance(text, (tuple, list)) else str(text)


def truncate_texts(tokenizer, texts: list, max_tokens: int) -> list[str]:
    """Each text cut to at most ``max_tokens`` tokens (``training.max_length``), before it goes into the template."""
    plain = [as_text(t) for t in texts]
    if not plain:
        return plain
    ids = tokenizer(plain, add_special_tokens=False)["input_ids"]
    return [t if len(i) <= max_tokens else tokenizer.decode(i[:max_tokens]) for t, i in zip(plain, ids)]


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Prompt ids; a chat-templated prompt already holds its special tokens."""
    if not prompts:
        return []
    return tokenizer(prompts, add_special_tokens=not has_chat_template(tokenizer))["input_ids"]


def encode_answer(tokenizer, text: str) -> list[int]:
    """A label text's ids, then eos (so that a label that is a prefix of another still scores apart from it)."""
    prefix = "" if has_chat_template(tokenizer) else " "
    ids = tokenizer(prefix + text, add_special_tokens=False)["input_ids"]
    return ids + ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])


def pack(prompts: list[list[int]], answers: list[list[int]], length: int, pad_id: int) -> Tensor:
    """``(n, 3, length)``: prompt ids (pad-filled), prompt mask, answer ids (IGNORE-filled)."""
    out = torch.zeros((len(prompts), 3, length), dtype=torch.long)
    out[:, 0] = pad_id
    out[:, 2] = IGNORE
    for row, (prompt, answer) in enumerate(zip(prompts, answers)):
        out[row, 0, : len(prompt)] = torch.tensor(prompt, dtype=torch.long)
        out[row, 1, : len(prompt)] = 1
        out[row, 2, : len(answer)] = torch.tensor(answer, dtype=torch.long)
    return out


def draw_demonstrations(task: TaskData, texts: list[str], shots: int, seed: int) -> list[int]:
    """``shots`` training examples per class, drawn with ``seed``, interleaved by class (indices into the train split)."""
    rng = random.Random(seed * 1_000_003 + len(task.name))
    by_class = [[i for i, label in enumerate(task.train_labels) if label == c] for c in range(len(task.label_names))]
    picked = [rng.sample(rows, min(shots, len(rows))) for rows in by_class]
    order = [rows[k] for k in range(shots) for rows in picked if k < len(rows)]
    return order


@dataclass
class InstructionSettings:
    """What encoding needs beyond the tasks: where their configs live and the model's limits."""

    configs: list[InstructionConfig | None]  # per task, its ``instruction`` block
    source: Source  # the stream file, for error positions
    max_text_tokens: int  # training.max_length
    context: int | None  # the model's context length, None when unbounded
    seq2seq: bool
    shots: int = 0  # in-context demonstrations per class (0: none built)
    seed: int = 0


def encode_instruction_tasks(tasks: list[TaskData], space: LabelSpace, tokenizer, settings: InstructionSettings) -> list[EncodedInstructionTask]:
    """Tokenise every task as prompts and label-text answers, validating templates, label texts and lengths."""
    pieces = []
    for index, task in enumerate(tasks):
        path = ("tasks", index, "instruction")
        config = settings.configs[index] or InstructionConfig()
        if task.kind != "classification":
            raise settings.source.error(("tasks", index, "type"), "a generative backbone takes classification tasks only (no mlm)")
        texts = label_texts(task, settings.configs[index], settings.source, path)
        answers = [encode_answer(tokenizer, t) for t in texts]
        for a in range(len(answers)):
            for b in range(a):
                if answers[a] == answers[b]:
                    raise settings.source.error(
                        path + ("label_texts",), f"label texts {texts[b]!r} and {texts[a]!r} tokenise to the same ids {answers[a]}"
                    )

        def prompts_of(raw_texts, demonstrations=(), template=config.template, labels=texts):
            cut = truncate_texts(tokenizer, raw_texts, settings.max_text_tokens)
            return encode_prompts(tokenizer, [render_prompt(tokenizer, template, t, labels, demonstrations) for t in cut])

        train_prompts, test_prompts, valid_prompts = (prompts_of(task.train_texts), prompts_of(task.test_texts),
                                                      prompts_of(task.valid_texts))
        in_context = None
        if settings.shots:
            shown = draw_demonstrations(task, task.train_texts, settings.shots, settings.seed)
            demos = list(zip(truncate_texts(tokenizer, [task.train_texts[i] for i in shown], settings.max_text_tokens),
                             [texts[task.train_labels[i]] for i in shown]))
            in_context = prompts_of(task.test_texts, demos)
        pieces.append((task, config, texts, answers, train_prompts, test_prompts, in_context, valid_prompts))

    longest_answer = max(len(a) for p in pieces for a in p[3])
    longest_prompt = max((len(x) for p in pieces for group in (p[4], p[5], p[6] or [], p[7]) for x in group), default=1)
    for index, (task, _config, *_rest) in enumerate(pieces):
        prompts = [x for group in (_rest[2], _rest[3], _rest[4] or [], _rest[5]) for x in group]
        longest = max((len(x) for x in prompts), default=0)
        needed = longest if settings.seq2seq else longest + longest_answer
        if settings.context is not None and needed > settings.context:
            raise settings.source.error(
                ("tasks", index, "instruction", "template"),
                f"prompts of task {task.name!r} reach {longest} tokens (+ {longest_answer} answer tokens); "
                f"the model's context is {settings.context}",
                hint="lower training.max_length (it caps the {text} part), shorten the template or use fewer in-context shots",
            )
    length = max(longest_prompt, longest_answer)
    pad_id = tokenizer.pad_token_id
    encoded = []
    for index, (task, config, texts, answers, train_prompts, test_prompts, in_context, valid_prompts) in enumerate(pieces):
        test_answers = [answers[label] for label in task.test_labels]
        has_valid = bool(task.valid_labels)
        encoded.append(
            EncodedInstructionTask(
                name=task.name,
                index=index,
                train_inputs=pack(train_prompts, [answers[label] for label in task.train_labels], length, pad_id),
                train_targets=space.targets(index, task.train_labels),
                test_inputs=pack(test_prompts, test_answers, length, pad_id),
                test_targets=space.targets(index, task.test_labels),
                candidates=pack([[]] * len(answers), answers, longest_answer, pad_id)[:, 2],
                candidate_units=space.targets(index, list(range(len(texts)))),
                label_texts=texts,
                exact_match=config.exact_match,
                in_context_inputs=pack(in_context, test_answers, length, pad_id) if in_context is not None else None,
                valid_inputs=pack(valid_prompts, [answers[label] for label in task.valid_labels], length, pad_id) if has_valid else None,
                valid_targets=space.targets(index, task.valid_labels) if has_valid else None,
            )
        )
    return encoded

