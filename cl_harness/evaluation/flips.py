"""Negative flip rate: how many test examples of earlier tasks a training step turns from right to wrong.

Yan et al. 2021, "Positive-congruent training: towards regression-free model updates" (CVPR); the
continual-learning form follows Renate (AWS): after step ``i``, the fraction of the test examples of
the tasks trained before task ``i`` that the model got right after step ``i-1`` and gets wrong after
step ``i``. Each example's correctness is kept as one bit (``np.packbits``), one packed array per
(step, task), so it is stored once, next to the accuracy matrix, and never as predictions.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

import numpy as np

def pack_correct(correct: Sequence[bool] | np.ndarray) -> str:
    """One task's per-example correctness, ``(n,)`` booleans in test-set order, as base64 of packed bits."""
    bits = np.packbits(np.asarray(correct, dtype=bool))  # (ceil(n / 8),)
    return base64.b64encode(bits.tobytes()).decode("ascii")


def unpack_correct(packed: str, n: int) -> np.ndarray:
    """The ``(n,)`` boolean array ``pack_correct`` packed."""
    bits = np.frombuffer(base64.b64decode(packed), dtype=np.uint8)
    return np.unpackbits(bits, count=n).astype(bool)


def negative_flip_rate(before: Sequence[np.ndarray], after: Sequence[np.ndarray]) -> float:
    """Fraction of examples right in ``before`` and wrong in ``after``, pooled over the given tasks' test sets.

    ``before[j]`` and ``after[j]`` are task j's ``(n_j,)`` correctness before and after one training
    step; pass only the tasks trained before that step. NaN when there is no example.
    """
    if len(before) != len(after):
        raise ValueError(f"{len(before)} tasks before the step, {len(after)} after")
    flips, total = 0, 0
    for old, new in zip(before, after):
        old, new = np.asarray(old, dtype=bool), np.asarray(new, dtype=bool)
        if old.shape != new.shape:
            raise ValueError(f"correctness shapes differ: {old.shape} before, {new.shape} after")
        flips += int(np.count_nonzero(old & ~new))
        total += old.size
    return flips / total if total else float("nan")


def _step_rate(before: Sequence[np.ndarray | None], after: Sequence[np.ndarray | None], step: int) -> float | None:
    """The flip rate of ``step`` over tasks 0..step-2 with a per-example record in both rows (None if there is none)."""
    pairs = [(old, new) for old, new in zip(before[: step - 1], after[: step - 1]) if old is not None and new is not None]
    return negative_flip_rate([p[0] for p in pairs], [p[1] for p in pairs]) if pairs else None


def step_flip_rates(correct: Sequence[Sequence[np.ndarray | None]]) -> dict[int, float]:
    """``{step: nfr}`` for steps 2..k of ``correct[step][task]`` (row 0: untrained model; columns in training order).

    Step i pools the tasks 0..i-2 (0-based) trained before task i; tasks with no per-example
    correctness (None, e.g. mlm columns) are left out. A step with no such example has no entry.
    """
    rates = {step: _step_rate(correct[step - 1], correct[step], step) for step in range(2, len(correct))}
    return {step: rate for step, rate in rates.items() if rate is not None}


def mean_flip_rate(rates: dict[int, float]) -> float | None:
    """The run's summary ``nfr``: the mean of the per-step rates (None when no step has one)."""
    return float(np.mean(list(rates.values()))) if rates else None


def unpack_rows(rows: Sequence[Sequence[str | None]], sizes: Sequence[int]) -> list[list[np.ndarray | None]]:
    """``correct[step][task]`` arrays from packed rows (``sizes[task]`` examples each; None stays None)."""
    return [[None if cell is None else unpack_correct(cell, n) for cell, n in zip(row, sizes)] for row in rows]


def step_flip_rate(rows: Sequence[Sequence[str | None]], sizes: Sequence[int], step: int) -> float | None:
    """The flip rate of ``step`` from packed rows 0..step; None when it is undefined or unrecorded."""
    if step < 2 or len(rows) <= step:
        return None
    before, after = unpack_rows(rows[step - 1: step + 1], sizes)
    return _step_rate(before, after, step)


def summary_flip_rate(rows: Sequence[Sequence[str | None]], sizes: Sequence[int]) -> float | None:
    """The run's mean per-step flip rate over the recorded steps; None when no step has a rate."""
    return mean_flip_rate(step_flip_rates(unpack_rows(rows, sizes)))
