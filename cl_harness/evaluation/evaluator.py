"""Score a model on the test split of every task: one row of the accuracy matrix."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from cl_harness.data.encoding import lengths


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
    for index in length_sorted_batches(inputs, batch_size):
        x = inputs[index].to(device, non_blocking=True)  # (batch, 3, length)
        logits = model(x, task_index)  # (batch, width)
        correct[index.to(device)] = logits.argmax(dim=1) == targets[index].to(device, non_blocking=True)
        if on_batch is not None:
            on_batch(len(index))
    model.train(was_training)
    return correct.cpu()


def task_accuracy(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    task_index: int,
    batch_size: int,
    device: torch.device,
    on_batch: Callable[[int], None] | None = None,
) -> float:
    """Fraction of test examples of one task whose top logit is the right unit."""
    if len(targets) == 0:
        return float("nan")
    return int(task_correct(model, inputs, targets, task_index, batch_size, device, on_batch).sum()) / len(targets)


def evaluate_all(
    model: nn.Module,
    test_sets: Sequence[tuple[Tensor, Tensor, int]],
    batch_size: int,
    device: torch.device,
    on_batch: Callable[[int], None] | None = None,
) -> list[float]:
    """Accuracy on every ``(inputs, targets, task label)`` test set, seen or not: ``[R[i][j] for j]``."""
    return [
        task_accuracy(model, inputs, targets, task_label, batch_size, device, on_batch)
        for inputs, targets, task_label in test_sets
    ]
