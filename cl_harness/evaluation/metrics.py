"""Continual-learning metrics as pure functions of the accuracy matrix.

Notation (1-based in the formulas, 0-based in the code): ``R`` has shape ``(k, T)`` with
``R[i][j]`` the accuracy (a fraction in [0, 1]) on task ``j`` after training on task ``i``;
``b`` has shape ``(T,)``, the accuracy of the untrained model on each task.

A full run has ``k == T``. A partial matrix (``k < T``, a run that stopped early) is accepted:
every formula's "last row" ``R[T]`` becomes ``R[k]``, and sums over tasks that need a row
that was never trained run over the rows present. A sum with no terms (``bwt`` and the
forgetting measures when ``k == 1``, ``fwt`` when ``T == 1``) is defined as ``0.0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

ArrayLike = np.ndarray | Sequence[Sequence[float]]

SUMMARY_KEYS = ("acc", "bwt", "fwt", "forgetting", "forgetting_last", "learning_acc")


def _check_fractions(a: np.ndarray, what: str) -> None:
    """Raise ValueError unless every entry of ``a`` is finite and in [0, 1]."""
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{what} has non-finite entries")
    if np.any((a < 0.0) | (a > 1.0)):
        raise ValueError(f"{what} must hold fractions in [0, 1] (not percentages), got min {a.min()}, max {a.max()}")


def as_matrix(R: ArrayLike) -> np.ndarray:
    """Validate an accuracy matrix of shape (k, T), 1 <= k <= T, and return it as float64."""
    try:
        m = np.asarray(R, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"accuracy matrix is not a rectangular array of numbers: {exc}") from exc
    if m.ndim != 2:
        raise ValueError(f"accuracy matrix must be 2-D (rows: trained tasks, columns: tasks), got shape {m.shape}")
    k, t = m.shape
    if k == 0 or t == 0:
        raise ValueError(f"accuracy matrix is empty (shape {m.shape})")
    if k > t:
        raise ValueError(f"accuracy matrix has more rows ({k}) than tasks ({t}); expected shape (k, T) with k <= T")
    _check_fractions(m, "accuracy matrix")
    return m


def as_initial(b: ArrayLike, n_tasks: int) -> np.ndarray:
    """Validate the untrained-model accuracies, shape (T,), and return them as float64."""
    try:
        v = np.asarray(b, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"initial accuracies are not a flat array of numbers: {exc}") from exc
    if v.shape != (n_tasks,):
        raise ValueError(f"initial accuracies must have shape ({n_tasks},) to match the matrix, got {v.shape}")
    _check_fractions(v, "initial accuracies")
    return v


def acc(R: ArrayLike) -> float:
    """Final average accuracy: ACC = 1/T * sum_j R[T][j] (last row present, over all T tasks)."""
    m = as_matrix(R)
    return float(m[-1].mean())


def bwt(R: ArrayLike) -> float:
    """Backward transfer: BWT = 1/(T-1) * sum_{j<T} (R[T][j] - R[j][j]) (Lopez-Paz & Ranzato 2017)."""
    m = as_matrix(R)
    k = m.shape[0]
    if k == 1:
        return 0.0
    j = np.arange(k - 1)
    return float((m[-1, j] - m[j, j]).mean())


def fwt(R: ArrayLike, b: ArrayLike) -> float:
    """Forward transfer: FWT = 1/(T-1) * sum_{j>1} (R[j-1][j] - b_j) (Lopez-Paz & Ranzato 2017).

    With k rows, j runs over 2..min(k+1, T): each term needs the row trained just before task j.
    """
    m = as_matrix(R)
    k, t = m.shape
    v = as_initial(b, t)
    last = min(k + 1, t)  # 1-based index of the last task with a preceding row
    if last < 2:
        return 0.0
    j = np.arange(1, last)  # 0-based columns 1..last-1
    return float((m[j - 1, j] - v[j]).mean())


def forgetting(R: ArrayLike) -> float:
    """Average forgetting: F = 1/(T-1) * sum_{j<T} (max_{l in 1..T-1} R[l][j] - R[T][j]) (Chaudhry et al. 2018)."""
    m = as_matrix(R)
    k = m.shape[0]
    if k == 1:
        return 0.0
    best = m[:-1, : k - 1].max(axis=0)
    return float((best - m[-1, : k - 1]).mean())


def forgetting_last(R: ArrayLike) -> float:
    """Forgetting vs. just-trained accuracy: 1/(T-1) * sum_{j<T} (R[j][j] - R[T][j]) (Avalanche), which is -BWT."""
    return 0.0 - bwt(R)


def learning_acc(R: ArrayLike) -> float:
    """Learning accuracy: 1/T * sum_j R[j][j], the accuracy on each task right after training on it (rows present)."""
    m = as_matrix(R)
    k = m.shape[0]
    return float(np.diagonal(m)[:k].mean())


def seen_average(row: Sequence[float] | np.ndarray, step: int) -> float:
    """Accuracy averaged over the tasks seen after ``step`` tasks: mean(row[:step]).

    At step 0 nothing has been seen yet; the value is then the mean over all tasks (the untrained model's average).
    """
    v = np.asarray(row, dtype=np.float64)
    if v.ndim != 1 or v.size == 0:
        raise ValueError(f"row must be a non-empty 1-D sequence of accuracies, got shape {v.shape}")
    if not 0 <= step <= v.size:
        raise ValueError(f"step must be between 0 and {v.size}, got {step}")
    _check_fractions(v, "accuracy row")
    return float(v.mean() if step == 0 else v[:step].mean())


def summary(R: ArrayLike, b: ArrayLike) -> dict[str, float]:
    """All summary metrics of one run: acc, bwt, fwt, forgetting, forgetting_last, learning_acc."""
    return {
        "acc": acc(R),
        "bwt": bwt(R),
        "fwt": fwt(R, b),
        "forgetting": forgetting(R),
        "forgetting_last": forgetting_last(R),
        "learning_acc": learning_acc(R),
    }
