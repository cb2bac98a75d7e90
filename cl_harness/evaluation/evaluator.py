"""Score a model on the test (or validation) split of every task: one row of the accuracy matrix, and the scores it is made of."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from cl_harness.data.encoding import lengths
from cl_harness.evaluation.flips import pack_correct
from cl_harness.models.classifier import trim_batch
from cl_harness.models.masked_lm import IGNORE, MaskingSpec, mask_tokens, token_logits


def length_sorted_batches(inputs: Tensor, batch_size: int, min_fill: float = 0.9) -> list[Tensor]:
    """Index batches of examples sorted by length, each padding to at most ``1 / min_fill`` of its shortest text.

    A batch closes at ``batch_size`` rows or at the first text shorter than ``min_fill`` times
    its longest, so the padding computed is at most about 10% of the real tokens.
    """
    sizes = lengths(inputs)  # (n,)
    order = torch.argsort(sizes, descending=True)
    sorted_sizes = sizes[order].tolist()
    batches, start = [], 0
    while start < len(order):
        end, floor = start + 1, min_fill * sorted_sizes[start]
        while end < len(order) and end - start < batch_size and sorted_sizes[end] >= floor:
            end += 1
        batches.append(order[start:end])
        start = end
    return batches


@torch.inference_mode()
def task_correct(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    task_index: int,
    batch_size: int,
    device: torch.device,
    on_batch: Callable[[int], None] | None = None,
) -> Tensor:
    """Whether each test example's top logit is the right unit: ``(n,)`` booleans on the CPU, in test-set order."""
    if len(targets) == 0 or (hasattr(model, "can_predict") and not model.can_predict(targets)):
        return torch.zeros(len(targets), dtype=torch.bool)  # a class-incremental head never predicts unseen classes
    was_training = model.training
    model.eval()
    correct = torch.zeros(len(targets), dtype=torch.bool, device=device)  # (n,)
    with model.scoring() if hasattr(model, "scoring") else nullcontext():  # the model's inference fast path, if it has one
        for index in length_sorted_batches(inputs, batch_size):
            x = inputs[index].to(device, non_blocking=True)  # (batch, 3, length)
            logits = model(x, task_index)  # (batch, width)
            correct[index.to(device)] = logits.argmax(dim=1) == targets[index].to(device, non_blocking=True)
            if on_batch is not None:
                on_batch(len(index))
    model.train(was_training)
    return correct.cpu()


@torch.inference_mode()
def masked_token_accuracy(model, inputs: Tensor, spec: MaskingSpec, batch_size: int, device, seed: int = 0) -> float:
    """Fraction of masked tokens predicted right, under a fixed (seeded) masking of the held-out texts."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    correct = total = 0
    for start in range(0, len(inputs), batch_size):
        x = trim_batch(inputs[start : start + batch_size].to(device))  # (batch, 3, length)
        masked, labels = mask_tokens(x[:, 0], x[:, 1], spec, generator)
        logits = token_logits(model, torch.stack([masked, x[:, 1], x[:, 2]], dim=1))
        chosen = labels != IGNORE
        correct += int((logits.argmax(-1)[chosen] == labels[chosen]).sum())
        total += int(chosen.sum())
    model.train(was_training)
    return correct / total if total else float("nan")


@torch.inference_mode()
def pseudo_perplexity(model, inputs: Tensor, spec: MaskingSpec, batch_size: int, device) -> float:
    """``exp(-mean log p(w_i | text with w_i masked))`` over every real non-special token, one token masked at a time."""
    was_training = model.training
    model.eval()
    total_log_prob, count = 0.0, 0
    special = torch.tensor(spec.special_ids)
    for row in inputs:
        x = trim_batch(row.unsqueeze(0))[0]  # (3, length)
        positions = torch.nonzero(x[1].bool() & ~torch.isin(x[0], special)).flatten()
        for chunk in positions.split(batch_size):
            copies = x.unsqueeze(0).repeat(len(chunk), 1, 1)  # (chunk, 3, length)
            copies[torch.arange(len(chunk)), 0, chunk] = spec.mask_id
            log_probs = token_logits(model, copies.to(device)).log_softmax(-1)  # (chunk, length, vocab)
            picked = log_probs[torch.arange(len(chunk)), chunk.to(device), x[0, chunk].to(device)]
            total_log_prob += float(picked.sum())
            count += len(chunk)
    model.train(was_training)
    return math.exp(-total_log_prob / count) if count else float("nan")


def split_view(task, split: str):
    """The task with ``split``'s examples in its scored fields (``test_inputs`` / ``test_targets``); None without that split."""
    if split == "test":
        return task
    if split == "valid":
        if task.valid_targets is None:
            return None
        return dataclasses.replace(task, test_inputs=task.valid_inputs, test_targets=task.valid_targets)
    raise ValueError(f"unknown split {split!r}; expected test or valid")


class Evaluator:
    """Scores the model on every task's test (or validation) split after a step, in training order, whatever each task's kind.

    Each task's kind gives its column value (accuracy, masked-token accuracy, ...) and any extra per-task
    metrics, kept in ``extra`` as ``<prefix>/<task>`` (e.g. ``pppl/wiki``) until the next call. A kind that
    scores example by example also returns its ``(n,)`` hits; they are kept packed in ``correct`` (one entry
    per task, None where the kind gives none) for the negative flip rate. With ``split="valid"`` a task
    without a validation split scores NaN.
    """

    def __init__(self, tasks: Sequence, kinds, env, show_progress: bool = False, describe: str = "", split: str = "test") -> None:
        self.tasks = list(tasks)  # EncodedTask, in training order
        self.split = split
        self.views = [split_view(t, split) for t in self.tasks]  # what is scored: the split's examples, or None
        self.describe = describe  # the run's label, put before the bar's text
        self.kinds = kinds  # a TaskKindRegistry
        self.env = env  # the kinds' KindEnv
        self.show_progress = show_progress
        self.total = sum(len(v.test_targets) for v in self.views if v is not None)
        self.extra: dict[str, float] = {}
        self.correct: list[str | None] = []  # per task: packed per-example correctness of the last call

    def __call__(self, model: nn.Module, step: int) -> list[float]:
        """One row of the accuracy matrix: every task's column value after ``step``."""
        row, self.extra, self.correct = [], {}, []
        what = f"evaluate after task {step}/{len(self.tasks)}" if step else "evaluate the untrained model"
        what = what if self.split == "test" else f"{what} ({self.split})"
        desc = f"{self.describe} · {what}" if self.describe else what
        with tqdm(total=self.total, desc=desc, unit="ex", leave=False, disable=not self.show_progress) as bar:
            for task, view in zip(self.tasks, self.views):
                if view is None:
                    row.append(float("nan"))
                    self.correct.append(None)
                    continue
                value, extra, *hits = self.kinds.get(task.kind).score(model, view, self.env, bar.update)
                row.append(value)
                self.extra.update({f"{prefix}/{task.name}": v for prefix, v in extra.items()})
                self.correct.append(pack_correct(hits[0].numpy()) if hits and hits[0] is not None else None)
        return row

    def sizes(self) -> list[int]:
        """The number of scored examples of each task, in training order (0 without the split)."""
        return [0 if v is None else len(v.test_targets) for v in self.views]
