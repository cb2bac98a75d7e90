"""Negative flip rate (Yan et al. 2021) on a hand-made example, its compact storage, and a real run logging it."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cl_harness.evaluation.flips import (
    negative_flip_rate,
    pack_correct,
    step_flip_rate,
    step_flip_rates,
    summary_flip_rate,
    unpack_correct,
)
from cl_harness.tracking.schema import NFR_METRIC

T = True
F = False
# correct[step][task]: 3 tasks with 4, 3 and 2 test examples; row 0 is the untrained model
CORRECT = [
    [[F, F, T, F], [F, T, F], [F, F]],
    [[T, T, T, F], [F, F, F], [T, F]],  # after task 1
    [[T, F, F, F], [T, T, T], [F, F]],  # after task 2: task 1 loses 2 of its 3 right -> 2 / 4 examples
    [[T, T, F, F], [F, T, F], [T, T]],  # after task 3: task 1 loses none, task 2 loses 2 -> 2 / (4 + 3)
]


def arrays(rows):
    return [[np.array(cell) for cell in row] for row in rows]


def test_negative_flip_rate_by_hand():
    rates = step_flip_rates(arrays(CORRECT))
    assert rates == pytest.approx({2: 2 / 4, 3: 2 / 7})
    # the flips of the task just trained and of tasks not yet trained do not count
    assert negative_flip_rate([np.array([T, T])], [np.array([F, T])]) == 0.5
    assert math.isnan(negative_flip_rate([], []))
    with pytest.raises(ValueError):
        negative_flip_rate([np.array([T])], [np.array([T, F])])


def test_packed_bits_round_trip_and_are_compact():
    hits = np.random.default_rng(0).random(1001) > 0.5
    packed = pack_correct(hits)
    assert np.array_equal(unpack_correct(packed, 1001), hits) and len(packed) <= 4 * math.ceil(127 / 3)


def test_per_step_and_summary_metrics_from_packed_rows():
    rows = [[pack_correct(cell) for cell in row] for row in CORRECT]
    sizes = [4, 3, 2]
    assert step_flip_rate(rows, sizes, 1) is None and step_flip_rate(rows, sizes, 4) is None
    assert step_flip_rate(rows, sizes, 2) == 0.5
    assert step_flip_rate(rows, sizes, 3) == pytest.approx(2 / 7)
    assert summary_flip_rate(rows, sizes) == pytest.approx((0.5 + 2 / 7) / 2)
    rows[2][0] = None  # an mlm column has no per-example record: left out
    assert step_flip_rate(rows, sizes, 2) is None and step_flip_rate(rows, sizes, 3) == 2 / 3


def test_a_run_records_correctness_and_its_nfr_matches_the_matrix(tiny_run):
    result, _ = tiny_run("naive", tasks=3, lr=5e-3)
    nfr = result.metrics[NFR_METRIC]
    # every earlier task has 20 test examples, so a step's pooled accuracy drop bounds its flip rate from below
    m = result.matrix
    drops = [(sum(m[s - 2][: s - 1]) - sum(m[s - 1][: s - 1])) / (s - 1) for s in (2, 3)]
    assert nfr >= sum(drops) / 2 - 1e-9 and 0.0 < nfr <= 1.0
