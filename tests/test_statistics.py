"""Intervals, pairwise tests and Holm correction of the comparison table, against hand-computed and scipy values."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from cl_harness.report.statistics import (
    BOOTSTRAP,
    NO_INTERVAL,
    NO_TEST,
    PAIRED_T,
    T_INTERVAL,
    WELCH,
    WILCOXON,
    compare_pair,
    compare_strategies,
    confidence_interval,
    holm,
    statistics_columns,
    statistics_display,
)


def test_t_interval_of_three_runs_matches_the_textbook_formula():
    interval = confidence_interval([0.6, 0.7, 0.8])
    # mean 0.7, s = 0.1, t(0.975, 2) = 4.302653: half width 4.302653 * 0.1 / sqrt(3) = 0.248414
    assert interval.method == T_INTERVAL and interval.n == 3
    assert interval.mean == pytest.approx(0.7)
    assert (interval.low, interval.high) == pytest.approx((0.7 - 0.248414, 0.7 + 0.248414), abs=1e-6)


def test_one_run_has_no_interval_and_nan_runs_do_not_count():
    interval = confidence_interval([0.5, math.nan])
    assert interval.method == NO_INTERVAL and interval.n == 1 and interval.mean == 0.5 and math.isnan(interval.low)


def test_bootstrap_from_five_runs_is_seeded_and_inside_the_data():
    values = [0.61, 0.64, 0.70, 0.72, 0.80]
    first, again = confidence_interval(values), confidence_interval(values)
    assert first.method == BOOTSTRAP and first == again
    reference = stats.bootstrap((values,), lambda x, axis: x.mean(axis=axis), method="percentile", rng=3).confidence_interval
    assert (first.low, first.high) == pytest.approx((reference.low, reference.high), abs=0.01)
    assert min(values) <= first.low < first.mean < first.high <= max(values)
    assert first.high - first.low < 2 * 2.776 * stats.tstd(values) / math.sqrt(5)  # narrower than t's, not absurd
    assert first.high - first.low > 0.05


def test_matching_seeds_and_orders_give_a_paired_t_test_with_few_runs():
    a = {(0, 0): 0.80, (1, 0): 0.60, (2, 0): 0.75}
    b = {(0, 0): 0.50, (1, 0): 0.40, (2, 0): 0.55}
    result = compare_pair("a", a, "b", b)
    reference = stats.ttest_rel([0.80, 0.60, 0.75], [0.50, 0.40, 0.55])
    # differences 0.3, 0.2, 0.2: mean 0.2333, sd 0.05774, t = 0.2333 / (0.05774 / sqrt 3) = 7.0
    assert result.test == PAIRED_T and result.n_pairs == 3
    assert result.statistic == pytest.approx(7.0) and result.p == pytest.approx(reference.pvalue)


def test_six_or_more_pairs_use_wilcoxon():
    a = {(seed, 0): 0.5 + 0.1 * seed for seed in range(6)}
    b = {(seed, 0): a[(seed, 0)] - 0.01 * (seed + 1) for seed in range(6)}  # differences 0.01 .. 0.06, all positive
    result = compare_pair("a", a, "b", b)
    # all six differences positive: exact two-sided p = 2 / 2**6 = 0.03125
    assert result.test == WILCOXON and result.p == pytest.approx(2 / 64)


def test_different_seeds_give_welch():
    a = {(0, 0): 0.1, (1, 0): 0.2, (2, 0): 0.3}
    b = {(5, 0): 0.5, (6, 0): 0.7}
    result = compare_pair("a", a, "b", b)
    # Welch: t = (0.2 - 0.6) / sqrt(0.01/3 + 0.02/2) = -0.4 / 0.11547 = -3.4641
    assert result.test == WELCH and result.statistic == pytest.approx(-3.4641, abs=1e-4)
    assert result.p == pytest.approx(stats.ttest_ind([0.1, 0.2, 0.3], [0.5, 0.7], equal_var=False).pvalue)


def test_degenerate_pairs():
    same = {(0, 0): 0.5, (1, 0): 0.6}
    assert compare_pair("a", same, "b", dict(same)).p == 1.0
    shifted = {k: v - 0.1 for k, v in same.items()}
    assert compare_pair("a", same, "b", shifted).p == 0.0  # constant non-zero difference
    assert compare_pair("a", {(0, 0): 0.5}, "b", {(1, 0): 0.4, (2, 0): 0.3}).test == NO_TEST


def test_holm_bonferroni_by_hand():
    # sorted 0.01, 0.03, 0.04 times 3, 2, 1 -> 0.03, 0.06, 0.04 -> monotone 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, math.nan])[:3] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(holm([0.01, 0.04, 0.03, math.nan])[3])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


TABLE = {  # strategy -> {(seed, order): final acc}, three seeds each
    "replay": {(0, 0): 0.90, (1, 0): 0.88, (2, 0): 0.91},
    "der": {(0, 0): 0.89, (1, 0): 0.86, (2, 0): 0.90},
    "naive": {(0, 0): 0.30, (1, 0): 0.28, (2, 0): 0.33},
    "ewc": {(0, 0): 0.31},
}


def test_comparisons_against_best_and_naive_share_one_holm_family():
    result = compare_strategies(TABLE)
    raw = {
        frozenset(("replay", "der")): stats.ttest_rel([0.90, 0.88, 0.91], [0.89, 0.86, 0.90]).pvalue,
        frozenset(("replay", "naive")): stats.ttest_rel([0.90, 0.88, 0.91], [0.30, 0.28, 0.33]).pvalue,
        frozenset(("der", "naive")): stats.ttest_rel([0.89, 0.86, 0.90], [0.30, 0.28, 0.33]).pvalue,
    }  # ewc has one run: no test, not in the family
    keys = list(raw)
    adjusted = dict(zip(keys, holm([raw[k] for k in keys])))
    assert result["der"].p_vs_best == pytest.approx(adjusted[frozenset(("replay", "der"))])
    assert result["der"].p_vs_reference == pytest.approx(adjusted[frozenset(("der", "naive"))])
    assert result["naive"].p_vs_best == pytest.approx(adjusted[frozenset(("replay", "naive"))])
    assert result["naive"].significant_vs_best and result["der"].significant_vs_reference
    assert result["der"].p_vs_best > 0.05 and not result["der"].significant_vs_best
    assert result["replay"].vs_best is None and result["ewc"].vs_best.test == NO_TEST
    assert math.isnan(result["ewc"].p_vs_best)


def test_table_columns_and_cells():
    import pandas as pd

    order = ["replay", "der", "ewc", "naive"]
    columns = statistics_columns(TABLE, order)
    assert list(columns["significant_vs_naive"]) == [True, True, False, False]
    table = pd.concat([pd.DataFrame({"strategy": order, "n_finished": [3, 3, 1, 3],
                                     "acc_mean": [0.8967, 0.8833, 0.31, 0.3033]}), columns], axis=1)
    headers, cells = statistics_display(table, lambda v: f"{100 * v:.1f}")
    assert headers == ["acc 95% CI (%)", "p vs best", "p vs naive"]
    assert cells[0][1] == "best" and cells[0][2].endswith(" *") and cells[2] == ["1 run: no interval", "-", "-"] and cells[3][2] == "naive"
    assert cells[1][1] != "-" and not cells[1][1].endswith("*")  # der vs replay: tested, not significant
