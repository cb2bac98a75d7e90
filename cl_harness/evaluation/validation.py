"""The validation accuracy matrix: every task's validation split scored after every step, beside the test matrix.

Validation splits are carved from the training data (``valid_per_class`` / ``valid_fraction`` of a
task); tasks without one have NaN cells. Hyperparameter search reads only these numbers. The store
names (``valid_acc/<task>``, ``valid_accuracy_matrix.json``) live in ``tracking/schema.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _defined(values: Sequence[float | None]) -> list[float]:
    return [float(v) for v in values if v is not None and not math.isnan(v)]


def defined_cells(tasks: Sequence[str], row: Sequence[float | None]) -> dict[str, float]:
    """``{task: validation accuracy}`` for the tasks of the row that have a validation split."""
    return {name: float(v) for name, v in zip(tasks, row) if v is not None and not math.isnan(v)}


def seen_valid_average(row: Sequence[float | None], step: int) -> float | None:
    """Mean validation accuracy over the tasks seen after ``step`` (all tasks at step 0) that have a validation split."""
    seen = _defined(row if step == 0 else row[:step])
    return sum(seen) / len(seen) if seen else None


def final_valid_acc(matrix: Sequence[Sequence[float | None]]) -> float | None:
    """Mean validation accuracy over the tasks with a validation split after the last step (None if there is none)."""
    if not matrix:
        return None
    last = _defined(matrix[-1])
    return sum(last) / len(last) if last else None
