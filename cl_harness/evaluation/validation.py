"""The validation accuracy matrix: every task's validation split scored after every step, beside the test matrix.

Validation splits are carved from the training data (``valid_per_class`` / ``valid_fraction`` of a
task); tasks without one have ``None`` cells. Hyperparameter search reads only these numbers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

#: Names (to move into tracking/schema.py): per-step metrics, the final metric and the artifact.
VALID_ACC_PREFIX = "valid_acc"
VALID_SEEN_AVG = "valid_acc/seen_avg"
VALID_ACC_METRIC = "valid_acc"
VALID_MATRIX_ARTIFACT = "valid_accuracy_matrix.json"


def _defined(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(v)]


def valid_step_metrics(tasks: Sequence[str], row: Sequence[float | None] | None, step: int, key=str) -> dict[str, float]:
    """``valid_acc/<task>`` for every task with a validation split and ``valid_acc/seen_avg`` over the seen ones."""
    if row is None:
        return {}
    metrics = {key(f"{VALID_ACC_PREFIX}/{name}"): float(v) for name, v in zip(tasks, row) if v is not None and not math.isnan(v)}
    seen = _defined(row if step == 0 else row[:step])
    if seen:
        metrics[VALID_SEEN_AVG] = sum(seen) / len(seen)
    return metrics


def final_valid_acc(matrix: Sequence[Sequence[float | None]]) -> float | None:
    """Mean validation accuracy over the tasks with a validation split after the last step (None if there is none)."""
    if not matrix:
        return None
    last = _defined(matrix[-1])
    return sum(last) / len(last) if last else None


def valid_matrix_dict(tasks: Sequence[str], initial: Sequence[float | None], matrix: Sequence[Sequence[float | None]]) -> dict:
    """``valid_accuracy_matrix.json``: like ``accuracy_matrix.json``, with ``null`` for tasks without a validation split."""

    def cell(v):
        return None if v is None or math.isnan(v) else float(v)

    return {
        "tasks": [str(t) for t in tasks],
        "split": "valid",
        "initial": [cell(v) for v in initial],
        "matrix": [[cell(v) for v in row] for row in matrix],
    }
