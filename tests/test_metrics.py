"""Continual-learning metrics checked against matrices worked out by hand (1-based R[i][j] in comments)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cl_harness.evaluation.metrics import (
    SUMMARY_KEYS,
    acc,
    bwt,
    forgetting,
    forgetting_last,
    fwt,
    learning_acc,
    seen_average,
    summary,
)

R2 = [
    [0.9, 0.1],
    [0.6, 0.8],
]
B2 = [0.5, 0.2]

R3 = [
    [0.8, 0.3, 0.2],
    [0.5, 0.9, 0.4],
    [0.7, 0.6, 1.0],
]
B3 = [0.3, 0.1, 0.5]

# Task 1 falls (0.7 -> 0.4), rises above its just-trained accuracy (0.9), then falls again (0.6):
# forgetting (max) and forgetting_last (diagonal) differ.
R4 = [
    [0.7, 0.2, 0.1, 0.3],
    [0.4, 0.8, 0.3, 0.2],
    [0.9, 0.5, 0.6, 0.4],
    [0.6, 0.7, 0.5, 0.8],
]
B4 = [0.2, 0.1, 0.2, 0.25]


def check(got: dict[str, float], want: dict[str, float]) -> None:
    assert list(got) == list(SUMMARY_KEYS)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
        assert type(got[key]) is float


def test_2x2_by_hand() -> None:
    check(
        summary(R2, B2),
        {
            "acc": 0.7,  # (0.6 + 0.8) / 2
            "bwt": -0.3,  # R21 - R11 = 0.6 - 0.9
            "fwt": -0.1,  # R12 - b2 = 0.1 - 0.2
            "forgetting": 0.3,  # max(R11) - R21 = 0.9 - 0.6
            "forgetting_last": 0.3,  # R11 - R21
            "learning_acc": 0.85,  # (0.9 + 0.8) / 2
        },
    )


def test_3x3_by_hand() -> None:
    check(
        summary(R3, B3),
        {
            "acc": 2.3 / 3,  # (0.7 + 0.6 + 1.0) / 3
            "bwt": -0.2,  # ((0.7 - 0.8) + (0.6 - 0.9)) / 2 = (-0.1 - 0.3) / 2
            "fwt": 0.05,  # ((R12 - b2) + (R23 - b3)) / 2 = ((0.3 - 0.1) + (0.4 - 0.5)) / 2
            # j=1: max(0.8, 0.5) - 0.7 = 0.1; j=2: max(0.3, 0.9) - 0.6 = 0.3; mean 0.2
            "forgetting": 0.2,
            "forgetting_last": 0.2,  # ((0.8 - 0.7) + (0.9 - 0.6)) / 2
            "learning_acc": 0.9,  # (0.8 + 0.9 + 1.0) / 3
        },
    )


def test_4x4_by_hand_max_forgetting_differs_from_last() -> None:
    check(
        summary(R4, B4),
        {
            "acc": 0.65,  # (0.6 + 0.7 + 0.5 + 0.8) / 4 = 2.6 / 4
            "bwt": -0.1,  # ((0.6 - 0.7) + (0.7 - 0.8) + (0.5 - 0.6)) / 3
            # ((R12 - b2) + (R23 - b3) + (R34 - b4)) / 3 = ((0.2 - 0.1) + (0.3 - 0.2) + (0.4 - 0.25)) / 3
            "fwt": 0.35 / 3,
            # j=1: max(0.7, 0.4, 0.9) - 0.6 = 0.3; j=2: max(0.2, 0.8, 0.5) - 0.7 = 0.1;
            # j=3: max(0.1, 0.3, 0.6) - 0.5 = 0.1; mean 0.5 / 3
            "forgetting": 0.5 / 3,
            "forgetting_last": 0.1,  # ((0.7 - 0.6) + (0.8 - 0.7) + (0.6 - 0.5)) / 3
            "learning_acc": 0.725,  # (0.7 + 0.8 + 0.6 + 0.8) / 4
        },
    )
    assert forgetting(R4) > forgetting_last(R4)
    assert forgetting_last(R4) == pytest.approx(-bwt(R4))


def test_individual_functions_accept_numpy() -> None:
    m = np.array(R3)
    assert acc(m) == pytest.approx(2.3 / 3)
    assert bwt(m) == pytest.approx(-0.2)
    assert fwt(m, np.array(B3)) == pytest.approx(0.05)
    assert forgetting(m) == pytest.approx(0.2)
    assert forgetting_last(m) == pytest.approx(0.2)
    assert learning_acc(m) == pytest.approx(0.9)


def test_partial_matrix_two_of_four_rows() -> None:
    check(
        summary(R4[:2], B4),
        {
            "acc": 0.425,  # last row present, all tasks: (0.4 + 0.8 + 0.3 + 0.2) / 4
            "bwt": -0.3,  # R21 - R11 = 0.4 - 0.7
            "fwt": 0.1,  # j = 2..3: ((0.2 - 0.1) + (0.3 - 0.2)) / 2
            "forgetting": 0.3,  # max(R11) - R21 = 0.7 - 0.4
            "forgetting_last": 0.3,
            "learning_acc": 0.75,  # (0.7 + 0.8) / 2
        },
    )


def test_partial_matrix_one_row() -> None:
    check(
        summary(R4[:1], B4),
        {
            "acc": 0.325,  # (0.7 + 0.2 + 0.1 + 0.3) / 4
            "bwt": 0.0,  # no earlier task: defined as 0
            "fwt": 0.1,  # j = 2 only: R12 - b2 = 0.2 - 0.1
            "forgetting": 0.0,
            "forgetting_last": 0.0,
            "learning_acc": 0.7,  # R11
        },
    )


def test_single_task() -> None:
    check(
        summary([[0.9]], [0.1]),
        {"acc": 0.9, "bwt": 0.0, "fwt": 0.0, "forgetting": 0.0, "forgetting_last": 0.0, "learning_acc": 0.9},
    )


def test_seen_average() -> None:
    row = [0.2, 0.4, 0.9]
    assert seen_average(row, 0) == pytest.approx(0.5)  # nothing seen: mean over all tasks (1.5 / 3)
    assert seen_average(row, 1) == pytest.approx(0.2)
    assert seen_average(row, 2) == pytest.approx(0.3)  # (0.2 + 0.4) / 2
    assert seen_average(np.array(row), 3) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ([], "2-D"),
        ([0.5, 0.5], "2-D"),
        ([[[0.5]]], "2-D"),
        (np.zeros((0, 3)), "empty"),
        ([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5]], "more rows"),
        ([[0.5, 0.5], [0.5]], "rectangular"),
        ([[90.0, 10.0], [60.0, 80.0]], r"\[0, 1\]"),
        ([[0.5, math.nan], [0.5, 0.5]], "non-finite"),
    ],
)
def test_bad_matrix(matrix: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        summary(matrix, [0.0, 0.0])  # type: ignore[arg-type]


@pytest.mark.parametrize("initial", [[0.1], [0.1, 0.2, 0.3], [[0.1, 0.2]], [0.1, 1.5]])
def test_bad_initial(initial: object) -> None:
    with pytest.raises(ValueError, match="initial accuracies"):
        fwt(R2, initial)  # type: ignore[arg-type]


@pytest.mark.parametrize(("row", "step"), [([], 0), ([0.1, 0.2], -1), ([0.1, 0.2], 3), ([[0.1]], 1)])
def test_bad_seen_average(row: list, step: int) -> None:
    with pytest.raises(ValueError):
        seen_average(row, step)
