"""Intervals, pairwise tests and Holm correction of the comparison table, against hand-computed and scipy values."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from cl_harness.report.statistics import (
    BOOTSTRAP,
    DEGENERATE,
    IDENTICAL,
    MAX_SEEDS,
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
    resolution,
    significance_legend,
    statistics_columns,
    statistics_display,
)


def test_t_interval_of_three_runs_matches_the_textbook_formula():
    interval = confidence_interval([0.6, 0.7, 0.8])
    # mean 0.7, s = 0.1, t(0.975, 2) = 4.302653: half width 4.302653 * 0.1 / sqrt(3) = 0.248414
    assert interval.method == T_INTERVAL and interval.n == 3
    assert interval.mean == pytest.approx(0.7)
    assert (interval.low, interval.high) == pytest.approx((0.7 - 0.248414, 0.7 + 0.248414), abs=1e-6)


def test_one_or_two_runs_have_no_interval_and_nan_runs_do_not_count():
    interval = confidence_interval([0.5, math.nan])
    assert interval.method == NO_INTERVAL and interval.n == 1 and interval.mean == 0.5 and math.isnan(interval.low)
    two = confidence_interval([0.5, 0.9, math.nan])  # t(0.975, 1) = 12.7 would span [0, 1] and more
    assert two.method == NO_INTERVAL and two.n == 2 and two.mean == pytest.approx(0.7) and math.isnan(two.high)


def test_equal_runs_give_a_degenerate_interval_not_a_certain_one():
    for values in ([0.917] * 3, [0.5] * 6):
        interval = confidence_interval(values)
        assert interval.method == DEGENERATE and interval.low == interval.high == interval.mean == values[0]
    assert confidence_interval([0.917, 0.917, 0.918]).method == T_INTERVAL


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


def test_pairs_that_do_not_differ_do_not_count_towards_wilcoxon():
    a = {(seed, 0): 0.5 + 0.1 * seed for seed in range(6)}
    b = {**{(seed, 0): a[(seed, 0)] - 0.01 * (seed + 1) for seed in range(5)}, (5, 0): a[(5, 0)]}  # one zero difference
    result = compare_pair("a", a, "b", b)
    # five differences left, all positive: the signed-rank test could not go below 2 / 2**5 = 0.0625
    assert result.test == PAIRED_T and result.n_pairs == 6
    assert result.p == pytest.approx(stats.ttest_rel(list(a.values()), list(b.values())).pvalue) and result.p < 0.05


def test_different_seeds_give_welch():
    a = {(0, 0): 0.1, (1, 0): 0.2, (2, 0): 0.3}
    b = {(5, 0): 0.5, (6, 0): 0.7, (7, 0): 0.6, (8, 0): 0.6}
    result = compare_pair("a", a, "b", b)
    # Welch: t = (0.2 - 0.6) / sqrt(0.01/3 + 0.0066667/4) = -0.4 / 0.0707107 = -5.6569
    assert result.test == WELCH and result.statistic == pytest.approx(-5.6569, abs=1e-4)
    assert result.p == pytest.approx(stats.ttest_ind([0.1, 0.2, 0.3], [0.5, 0.7, 0.6, 0.6], equal_var=False).pvalue)


def test_degenerate_pairs():
    same = {(0, 0): 0.5, (1, 0): 0.6, (2, 0): 0.7}
    equal = compare_pair("a", same, "b", dict(same))
    assert (equal.p, equal.test) == (1.0, IDENTICAL)  # no test ran: not labelled with one
    constant = {(seed, 0): 0.5 for seed in range(3)}
    unpaired = compare_pair("a", constant, "b", {(seed, 0): 0.5 for seed in range(3, 6)})
    assert (unpaired.p, unpaired.test) == (1.0, IDENTICAL)
    assert compare_pair("a", constant, "b", {(seed, 0): 0.4 for seed in range(3, 6)}).test == WELCH
    shifted = {k: v - 0.1 for k, v in same.items()}
    assert compare_pair("a", same, "b", shifted).p == 0.0  # constant non-zero difference
    assert compare_pair("a", {(0, 0): 0.5}, "b", {(1, 0): 0.4, (2, 0): 0.3}).test == NO_TEST


@pytest.mark.parametrize("runs", [1, 2])
def test_fewer_than_three_runs_give_no_test(runs):
    a = {(seed, 0): 0.5 + 0.1 * seed for seed in range(runs)}
    b = {(seed, 0): 0.2 + 0.05 * seed for seed in range(runs)}
    for left, right in ((a, b), (a, {(seed, 0): 0.1 + 0.01 * seed for seed in range(5)})):  # paired, then Welch
        result = compare_pair("a", left, "b", right)
        assert result.test == NO_TEST and math.isnan(result.p)
        assert resolution(left, right) is None


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
    assert headers == ["acc 95% CI (%)", "p vs best", "p vs naive", "MDD vs best (%)", "seeds for 2 pts"]
    assert cells[0][1] == "best" and cells[0][2].endswith(" *") and cells[3][2] == "naive"
    assert cells[2][:3] == ["1 run: no interval", "no test (< 3 runs)", "no test (< 3 runs)"]
    assert cells[1][1] != "-" and not cells[1][1].endswith("*")  # der vs replay: tested, not significant


def test_minimum_detectable_difference_of_paired_runs_by_hand():
    a = {(0, 0): 0.80, (1, 0): 0.60, (2, 0): 0.75}
    b = {(0, 0): 0.50, (1, 0): 0.40, (2, 0): 0.55}
    result = resolution(a, b)
    # differences 0.3, 0.2, 0.2: s_d = 0.0577350, se = s_d / sqrt(3) = 0.0333333; t(0.975, 2) = 4.302653, t(0.8, 2) = 1.060660
    assert result.paired and result.n == 3
    assert result.mdd == pytest.approx((4.302653 + 1.060660) * 0.0333333, rel=1e-5)
    # seeds for 2 points: the least n with (t(0.975, n-1) + t(0.8, n-1)) * 0.0577350 / sqrt(n) <= 0.02
    # n = 67: t(0.975, 66) = 1.996564, t(0.8, 66) = 0.847101 -> 2.843665 * 0.0577350 / 8.185353 = 0.020058 > 0.02
    # n = 68: t(0.975, 67) = 1.996008, t(0.8, 67) = 0.847019 -> 2.843027 * 0.0577350 / 8.246211 = 0.019905 <= 0.02
    assert result.seeds_needed == 68
    assert resolution(a, b, difference=0.5).seeds_needed == 3  # resolved already
    assert resolution(a, b, difference=1e-4).seeds_needed is None  # beyond MAX_SEEDS


def test_minimum_detectable_difference_of_unpaired_runs_uses_welch():
    a = {(0, 0): 0.1, (1, 0): 0.2, (2, 0): 0.3}
    b = {(5, 0): 0.5, (6, 0): 0.7, (7, 0): 0.6, (8, 0): 0.6}
    result = resolution(a, b)
    # var_a = 0.01, var_b = 0.0066667; se = sqrt(0.01/3 + 0.0066667/4) = 0.0707107
    # Welch df = se^4 / ((0.01/3)^2 / 2 + (0.0066667/4)^2 / 3) = 2.5e-5 / (5.5556e-6 + 9.2593e-7) = 3.857143
    # t(0.975, 3.857143) = 2.817474, t(0.8, 3.857143) = 0.945020
    assert not result.paired and result.n == 3
    assert result.mdd == pytest.approx((2.817474 + 0.945020) * 0.0707107, rel=1e-5)
    assert result.seeds_needed is not None and result.seeds_needed > 4
    flat = resolution({(k, 0): 0.5 for k in range(3)}, {(k, 9): 0.4 for k in range(3)})
    assert flat.mdd == 0.0 and flat.seeds_needed == 3  # no spread observed: anything is "detectable"


def test_table_cells_say_no_test_and_no_interval_below_three_runs():
    import pandas as pd

    runs = {"replay": {(0, 0): 0.9, (1, 0): 0.8}, "naive": {(0, 0): 0.3, (1, 0): 0.35}}
    order = ["replay", "naive"]
    table = pd.concat([pd.DataFrame({"strategy": order, "n_finished": [2, 2], "acc_mean": [0.85, 0.325]}),
                       statistics_columns(runs, order)], axis=1)
    headers, cells = statistics_display(table, lambda v: f"{100 * v:.1f}")
    assert headers == ["acc 95% CI (%)", "p vs best", "p vs naive"]  # no resolution columns: nothing tested
    assert cells == [["2 runs: no interval", "best", "no test (< 3 runs)"], ["2 runs: no interval", "no test (< 3 runs)", "naive"]]
    assert "1.000" not in str(cells) and "100.0" not in str(cells)


def test_table_cells_name_the_interval_method_and_give_the_resolution():
    import pandas as pd

    runs = {**TABLE, "flat": {(0, 0): 0.5, (1, 0): 0.5, (2, 0): 0.5}, "many": {(s, 0): 0.4 + 0.01 * s for s in range(5)}}
    order = ["replay", "der", "flat", "many", "ewc", "naive"]
    columns = statistics_columns(runs, order)
    means = [sum(runs[n].values()) / len(runs[n]) for n in order]
    table = pd.concat([pd.DataFrame({"strategy": order, "n_finished": [len(runs[n]) for n in order], "acc_mean": means}), columns], axis=1)
    headers, cells = statistics_display(table, lambda v: f"{100 * v:.1f}")
    assert headers[-2:] == ["MDD vs best (%)", "seeds for 2 pts"]
    assert cells[0][-2:] == ["best", "best"] and cells[1][0].endswith("] t") and cells[3][0].endswith("] bs")
    assert cells[2][0] == "degenerate: 3 equal runs" and cells[4][0] == "1 run: no interval" and cells[4][-2:] == ["-", "-"]
    der = resolution(TABLE["der"], TABLE["replay"])
    assert cells[1][-2:] == [f"{100 * der.mdd:.1f}", str(der.seeds_needed)]
    assert columns["seeds_to_resolve"][1] == der.seeds_needed
    legend = significance_legend(table)
    assert "t = Student t-interval (3-4 runs)" in legend and "bs = percentile bootstrap (5+ runs)" in legend
    assert "power 0.8" in legend and "alpha 0.05" in legend and "degenerate" in legend
    assert str(MAX_SEEDS) not in cells[1][-1]
