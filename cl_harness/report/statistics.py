"""Uncertainty and significance for a strategy comparison, from plain data (no store access).

Rules (one place, also shown in the report's definitions):

- **Interval:** a 95% interval for a strategy's mean over its finished runs. With 3-4 runs it is the
  Student t-interval ``mean ± t(0.975, n-1) · s / sqrt(n)``; with 5 or more runs it is a seeded
  percentile bootstrap of the mean (``BOOTSTRAP_RESAMPLES`` resamples). Fewer than ``MIN_RUNS`` runs
  have no interval (with 2, t(0.975, 1) = 12.7 spans any accuracy); runs that all score the same give a
  *degenerate* interval (zero width from zero observed spread, not certainty).
- **Pairwise test:** two strategies are compared on a metric with a *paired* test when both have runs
  for exactly the same (seed, order) pairs, at least ``MIN_RUNS`` of them: the Wilcoxon signed-rank test
  with 6 or more pairs that differ, else the paired t-test (the signed-rank test drops pairs that do not
  differ, and with 5 or fewer left its exact two-sided p-value cannot go below 2/2^5 = 0.0625, so it
  could never reject at 0.05). Otherwise Welch's unequal-variance
  t-test, which needs ``MIN_RUNS`` or more runs on each side. Identical values on both sides give p = 1.
- **Resolution:** with a test possible, the minimum detectable difference at the observed spread
  (two-sided ``ALPHA``, power ``POWER``, before the Holm correction): ``(t(1-ALPHA/2, df) + t(POWER, df)) · se``
  (Zar 2010, Biostatistical Analysis, 5th ed.), ``se = s_d / sqrt(n)`` with ``df = n - 1`` for paired
  runs, ``se = sqrt(s_a^2/n_a + s_b^2/n_b)`` with Welch's df otherwise; and the runs per strategy (seeds) the
  same formula needs to detect ``DIFFERENCE``.
- **Multiple comparisons:** the p-values of all distinct pairs tested in one table (each strategy vs
  the best, and vs ``naive``) form one family, corrected with Holm-Bonferroni (Holm 1979). A
  difference is significant when its corrected p-value is below ``ALPHA``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
CONFIDENCE = 0.95
BOOTSTRAP_FROM = 5
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
WILCOXON_FROM = 6
REFERENCE = "naive"
MIN_RUNS = 3  # runs per strategy (or pairs) below which no interval and no test is given
POWER = 0.8
DIFFERENCE = 0.02  # the difference (a fraction: 2 points) whose required number of seeds the report gives
MAX_SEEDS = 1000  # seeds searched for that number; more is reported as "> MAX_SEEDS"

T_INTERVAL, BOOTSTRAP, DEGENERATE, NO_INTERVAL = "t", "bootstrap", "degenerate", "none"
WILCOXON, PAIRED_T, WELCH, NO_TEST = "wilcoxon", "paired_t", "welch", "none"
IDENTICAL = "identical"  # the same value in every run on both sides: p = 1 with no test run
NO_TEST_CELL = f"no test (< {MIN_RUNS} runs)"


@dataclass(frozen=True)
class Interval:
    """A mean with its confidence interval (``low``/``high`` NaN when there is none)."""

    mean: float
    low: float
    high: float
    n: int
    method: str


@dataclass(frozen=True)
class PairTest:
    """One two-sided comparison of strategies ``a`` and ``b`` on one metric (``p`` uncorrected)."""

    a: str
    b: str
    test: str
    n_pairs: int
    statistic: float
    p: float


def confidence_interval(values: Sequence[float], confidence: float = CONFIDENCE, seed: int = BOOTSTRAP_SEED) -> Interval:
    """The mean of ``values`` (NaNs dropped) with a t-interval (3-4 values) or a seeded percentile bootstrap (>= 5);
    none below ``MIN_RUNS`` values, a degenerate one (``low == high == mean``) when they are all equal."""
    clean = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = len(clean)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, NO_INTERVAL)
    mean = float(clean.mean())
    if n < MIN_RUNS:
        return Interval(mean, math.nan, math.nan, n, NO_INTERVAL)
    if np.ptp(clean) == 0:
        return Interval(float(clean[0]), float(clean[0]), float(clean[0]), n, DEGENERATE)
    if n < BOOTSTRAP_FROM:
        half = float(stats.t.ppf(0.5 + confidence / 2, n - 1) * clean.std(ddof=1) / math.sqrt(n))
        return Interval(mean, mean - half, mean + half, n, T_INTERVAL)
    rng = np.random.default_rng(seed)
    means = clean[rng.integers(0, n, size=(BOOTSTRAP_RESAMPLES, n))].mean(axis=1)  # (resamples,)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return Interval(mean, float(low), float(high), n, BOOTSTRAP)


def _clean(runs: Mapping[Hashable, float]) -> dict[Hashable, float]:
    return {k: float(v) for k, v in runs.items() if v is not None and not math.isnan(v)}


def compare_pair(a: str, a_runs: Mapping[Hashable, float], b: str, b_runs: Mapping[Hashable, float]) -> PairTest:
    """Two-sided test of ``a`` vs ``b``; runs keyed by (seed, order): paired when the keys match, else Welch."""
    left, right = _clean(a_runs), _clean(b_runs)
    if set(left) == set(right) and len(left) >= MIN_RUNS:
        keys = sorted(left, key=repr)
        x, y = np.array([left[k] for k in keys]), np.array([right[k] for k in keys])
        diff = x - y
        if np.all(diff == 0):
            return PairTest(a, b, IDENTICAL, len(keys), 0.0, 1.0)
        test = WILCOXON if np.count_nonzero(diff) >= WILCOXON_FROM else PAIRED_T  # the signed-rank test drops zero differences
        if test == PAIRED_T and np.all(diff == diff[0]):  # constant non-zero difference: zero variance, t infinite
            return PairTest(a, b, test, len(keys), math.copysign(math.inf, diff[0]), 0.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = stats.wilcoxon(x, y) if test == WILCOXON else stats.ttest_rel(x, y)
        return PairTest(a, b, test, len(keys), float(result.statistic), float(result.pvalue))
    x, y = np.array(list(left.values())), np.array(list(right.values()))
    if len(x) < MIN_RUNS or len(y) < MIN_RUNS:
        return PairTest(a, b, NO_TEST, 0, math.nan, math.nan)
    if np.ptp(x) == 0 and np.ptp(y) == 0:
        if x[0] == y[0]:
            return PairTest(a, b, IDENTICAL, 0, 0.0, 1.0)
        return PairTest(a, b, WELCH, 0, math.copysign(math.inf, x[0] - y[0]), 0.0)
    result = stats.ttest_ind(x, y, equal_var=False)
    return PairTest(a, b, WELCH, 0, float(result.statistic), float(result.pvalue))


@dataclass(frozen=True)
class Resolution:
    """What a test of two strategies can resolve at the spread observed: see the module's rules."""

    mdd: float  # minimum detectable difference (a fraction), two-sided ALPHA, power POWER
    paired: bool
    n: int  # pairs (paired) or the smaller side's runs
    difference: float  # the difference asked about
    seeds_needed: int | None  # runs per strategy that detect ``difference``; None beyond MAX_SEEDS


def _detectable(se_per_run: np.ndarray, df: np.ndarray, alpha: float, power: float) -> np.ndarray:
    """``(t(1 - alpha/2, df) + t(power, df)) * se``, elementwise."""
    return (stats.t.ppf(1 - alpha / 2, df) + stats.t.ppf(power, df)) * se_per_run


def resolution(a_runs: Mapping[Hashable, float], b_runs: Mapping[Hashable, float], difference: float = DIFFERENCE,
               alpha: float = ALPHA, power: float = POWER) -> Resolution | None:
    """The minimum detectable difference of ``a`` vs ``b`` at their observed spread, and the runs per strategy that would
    detect ``difference``; paired when the (seed, order) keys match, else Welch's. None when no test is possible."""
    left, right = _clean(a_runs), _clean(b_runs)
    paired = set(left) == set(right)
    if min(len(left), len(right)) < MIN_RUNS:
        return None
    n_more = np.arange(MIN_RUNS, MAX_SEEDS + 1)  # candidate runs per strategy
    if paired:
        keys = sorted(left, key=repr)
        diff = [left[k] - right[k] for k in keys]
        s = float(np.std(diff, ddof=1)) if np.ptp(diff) else 0.0
        n = len(keys)
        mdd = float(_detectable(np.array(s / math.sqrt(n)), np.array(n - 1), alpha, power))
        needed = _detectable(s / np.sqrt(n_more), n_more - 1, alpha, power)
    else:
        var_a, var_b = (float(np.var(list(v.values()), ddof=1)) if np.ptp(list(v.values())) else 0.0 for v in (left, right))
        n_a, n_b = len(left), len(right)
        n = min(n_a, n_b)
        se = math.sqrt(var_a / n_a + var_b / n_b)
        if se == 0:
            mdd, needed = 0.0, np.zeros(len(n_more))
        else:
            df = se**4 / ((var_a / n_a) ** 2 / (n_a - 1) + (var_b / n_b) ** 2 / (n_b - 1))  # Welch-Satterthwaite
            mdd = float(_detectable(np.array(se), np.array(df), alpha, power))
            df_more = (var_a + var_b) ** 2 * (n_more - 1) / (var_a**2 + var_b**2)  # Welch's df with n runs a side
            needed = _detectable(np.sqrt((var_a + var_b) / n_more), df_more, alpha, power)
    enough = np.nonzero(needed <= difference)[0]
    return Resolution(mdd, paired, n, difference, int(n_more[enough[0]]) if len(enough) else None)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (Holm 1979), in input order; NaNs stay NaN and do not count."""
    indexed = [(p, i) for i, p in enumerate(pvalues) if not math.isnan(p)]
    indexed.sort()
    m = len(indexed)
    out = [math.nan] * len(pvalues)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out


@dataclass(frozen=True)
class StrategyStats:
    """One strategy's interval, its corrected comparisons with the best strategy and with ``naive``, and what the
    comparison with the best can resolve."""

    strategy: str
    interval: Interval
    vs_best: PairTest | None
    p_vs_best: float
    vs_reference: PairTest | None
    p_vs_reference: float
    resolution_vs_best: Resolution | None = None

    @property
    def significant_vs_best(self) -> bool:
        return not math.isnan(self.p_vs_best) and self.p_vs_best < ALPHA

    @property
    def significant_vs_reference(self) -> bool:
        return not math.isnan(self.p_vs_reference) and self.p_vs_reference < ALPHA


def compare_strategies(
    runs: Mapping[str, Mapping[Hashable, float]], reference: str = REFERENCE, seed: int = BOOTSTRAP_SEED,
    difference: float = DIFFERENCE,
) -> dict[str, StrategyStats]:
    """Per strategy: interval, Holm-corrected tests vs the best (highest mean) strategy and vs ``reference``, and the
    resolution of the comparison with the best (``difference``: the difference whose seeds are counted).

    ``runs`` maps strategy -> {(seed, order): value}. The best strategy is not tested against itself,
    nor ``reference`` against itself; every distinct pair tested enters one Holm family.
    """
    intervals = {name: confidence_interval(list(values.values()), seed=seed) for name, values in runs.items()}
    ranked = sorted((name for name in intervals if not math.isnan(intervals[name].mean)), key=lambda n: (-intervals[n].mean, n))
    best = ranked[0] if ranked else None
    pairs: dict[frozenset, PairTest] = {}
    for name in runs:
        for other in (best, reference if reference in runs else None):
            if other is not None and other != name and frozenset((name, other)) not in pairs:
                pairs[frozenset((name, other))] = compare_pair(name, runs[name], other, runs[other])
    keys = list(pairs)
    adjusted = dict(zip(keys, holm([pairs[k].p for k in keys])))

    def lookup(name: str, other: str | None) -> tuple[PairTest | None, float]:
        key = frozenset((name, other))
        return (pairs[key], adjusted[key]) if other is not None and key in pairs else (None, math.nan)

    return {
        name: StrategyStats(name, intervals[name], *lookup(name, best), *lookup(name, reference),
                            resolution(runs[name], runs[best], difference) if best is not None and name != best else None)
        for name in runs
    }


# --- table columns --------------------------------------------------------------------------------

_TESTS = (f"'{WILCOXON}' (Wilcoxon signed-rank, paired), '{PAIRED_T}' (paired t-test), '{WELCH}' (Welch's t-test), "
          f"'{IDENTICAL}' (the same value in every run on both sides: p = 1, no test run) or '{NO_TEST}' (no test: a side has "
          f"fewer than {MIN_RUNS} runs, or the row is the one compared with)")
#: The columns ``statistics_columns`` adds to the comparison table (raw values, fractions not percent), with their meanings.
STAT_COLUMNS = {
    "acc_ci_low": "lower bound of the 95% interval of the mean final accuracy (unclipped: may fall below 0); NaN without an interval",
    "acc_ci_high": "upper bound of that interval (unclipped: may exceed 1); NaN without an interval",
    "acc_ci_method": f"how the interval was made: '{T_INTERVAL}' (Student t-interval, {MIN_RUNS}-{BOOTSTRAP_FROM - 1} runs), "
                     f"'{BOOTSTRAP}' (seeded percentile bootstrap, {BOOTSTRAP_FROM}+ runs), '{DEGENERATE}' (every run scored "
                     f"the same: zero width) or '{NO_INTERVAL}' (fewer than {MIN_RUNS} runs)",
    "p_vs_best": "two-sided p-value of the final accuracy against the best strategy (the first row), Holm-Bonferroni corrected "
                 "over every pair tested in the table; NaN for the best strategy itself and where no test was possible",
    "test_vs_best": f"the test behind p_vs_best: {_TESTS}",
    "significant_vs_best": f"whether p_vs_best < {ALPHA}",
    "p_vs_naive": f"as p_vs_best, against {REFERENCE}; NaN for {REFERENCE} itself and when the table has no {REFERENCE} row",
    "test_vs_naive": f"the test behind p_vs_naive: {_TESTS}",
    "significant_vs_naive": f"whether p_vs_naive < {ALPHA}",
    "mdd_vs_best": f"minimum detectable difference from the best strategy's final accuracy at the observed spread (a fraction; "
                   f"two-sided alpha {ALPHA}, power {POWER}, before the Holm correction); NaN for the best and where no test is possible",
    "seeds_to_resolve": f"runs per strategy that would detect a difference of {DIFFERENCE:g} (a fraction: {100 * DIFFERENCE:g} points) "
                        f"from the best at the observed spread; inf beyond {MAX_SEEDS}, NaN where mdd_vs_best is",
}
INTERVAL_MARKS = {T_INTERVAL: "t", BOOTSTRAP: "bs"}
STAT_DEFINITIONS = {
    "acc 95% CI": (f"95% interval of the mean final accuracy, shown clipped to [0, 100] % (the CSV keeps the raw bounds): "
                   f"'t' marks a Student t-interval (mean ± t(0.975, n-1) s / sqrt(n), {MIN_RUNS}-{BOOTSTRAP_FROM - 1} runs), "
                   f"'bs' a seeded percentile bootstrap of the mean ({BOOTSTRAP_RESAMPLES} resamples, {BOOTSTRAP_FROM}+ runs); "
                   f"'degenerate' where every run scored the same (no spread observed, which is not certainty); "
                   f"no interval with fewer than {MIN_RUNS} runs."),
    "p vs best / p vs naive": (
        "two-sided p-value of the final accuracy against the best strategy / naive, Holm-Bonferroni corrected over all pairs "
        f"in the table; paired (Wilcoxon signed-rank with {WILCOXON_FROM}+ pairs that differ, paired t-test with fewer) when both "
        f"strategies ran the same seeds and orders, Welch's t-test otherwise, none (p = 1) where both sides score the same in "
        f"every run; '*' marks p < {ALPHA}; '{NO_TEST_CELL}' "
        f"where a side has fewer than {MIN_RUNS} runs."
    ),
    "MDD vs best": (
        f"minimum detectable difference from the best strategy's final accuracy at the observed spread: (t(1-{ALPHA}/2, df) "
        f"+ t({POWER}, df)) * se, two-sided alpha {ALPHA}, power {POWER}, before the Holm correction; paired (se of the "
        "per-seed differences, df = n-1) where seeds and orders match, else Welch's. 'seeds for d' is the number of runs per "
        "strategy that would detect a difference of d points at that spread."
    ),
}


def statistics_columns(runs: Mapping[str, Mapping[Hashable, float]], order: Sequence[str], difference: float = DIFFERENCE):
    """A DataFrame of STAT_COLUMNS, one row per strategy of ``order``, from ``runs`` (strategy -> {(seed, order): acc})."""
    import pandas as pd

    computed = compare_strategies(runs, difference=difference)
    rows = []
    for name in order:
        s = computed[name]
        resolved = s.resolution_vs_best
        rows.append({
            "acc_ci_low": s.interval.low, "acc_ci_high": s.interval.high, "acc_ci_method": s.interval.method,
            "p_vs_best": s.p_vs_best, "test_vs_best": s.vs_best.test if s.vs_best else NO_TEST,
            "significant_vs_best": s.significant_vs_best,
            "p_vs_naive": s.p_vs_reference, "test_vs_naive": s.vs_reference.test if s.vs_reference else NO_TEST,
            "significant_vs_naive": s.significant_vs_reference,
            "mdd_vs_best": resolved.mdd if resolved else math.nan,
            "seeds_to_resolve": (resolved.seeds_needed or math.inf) if resolved else math.nan,  # inf: more than MAX_SEEDS
        })
    return pd.DataFrame(rows, columns=list(STAT_COLUMNS))


def _p_cell(p: float, significant: bool) -> str:
    if math.isnan(p):
        return NO_TEST_CELL
    return (f"{p:.3f}" if p >= 0.001 else "<0.001") + (" *" if significant else "")


def _interval_cell(row, percent) -> str:
    n, method = int(row["n_finished"]), row["acc_ci_method"]
    if method == NO_INTERVAL:
        return f"{n} run{'s' if n != 1 else ''}: no interval" if n else "-"
    if method == DEGENERATE:
        return f"degenerate: {n} equal runs"
    low, high = max(0.0, row["acc_ci_low"]), min(1.0, row["acc_ci_high"])  # accuracy cannot leave [0, 1]
    return f"[{percent(low)}, {percent(high)}] {INTERVAL_MARKS.get(method, method)}"


def _seeds_cell(value: float) -> str:
    return "-" if math.isnan(value) else f"> {MAX_SEEDS}" if math.isinf(value) else f"{value:.0f}"


def statistics_display(table, percent, difference: float = DIFFERENCE) -> tuple[list[str], list[list[str]]]:
    """Headers and per-row cells for the interval, p-value and resolution columns of a comparison table (none if absent);
    the resolution columns only where some strategy has enough runs for a test."""
    if "acc_ci_low" not in table:
        return [], [[] for _ in range(len(table))]
    best = table["strategy"].iloc[0] if len(table) and not math.isnan(table["acc_mean"].iloc[0]) else None
    has_reference = REFERENCE in set(table["strategy"])
    resolved = "mdd_vs_best" in table and table["mdd_vs_best"].notna().any()
    headers = ["acc 95% CI (%)", "p vs best"] + (["p vs naive"] if has_reference else [])
    headers += ["MDD vs best (%)", f"seeds for {100 * difference:g} pts"] if resolved else []
    cells = []
    for _, row in table.iterrows():
        is_best = row["strategy"] == best
        line = [_interval_cell(row, percent), "best" if is_best else _p_cell(row["p_vs_best"], bool(row["significant_vs_best"]))]
        if has_reference:
            line.append("naive" if row["strategy"] == REFERENCE else _p_cell(row["p_vs_naive"], bool(row["significant_vs_naive"])))
        if resolved:
            line += ["best", "best"] if is_best else [
                "-" if math.isnan(row["mdd_vs_best"]) else percent(row["mdd_vs_best"]), _seeds_cell(row["seeds_to_resolve"])]
        cells.append(line)
    return headers, cells


def significance_legend(table, difference: float = DIFFERENCE) -> str:
    """The line under a table with statistics columns: what '*', each interval method and the resolution columns mean."""
    if "acc_ci_low" not in table:
        return ""
    lines = [f"* p < {ALPHA}, Holm-corrected (paired test where seeds and orders match, else Welch's; no test below {MIN_RUNS} runs)",
             f"CI: t = Student t-interval ({MIN_RUNS}-{BOOTSTRAP_FROM - 1} runs), bs = percentile bootstrap ({BOOTSTRAP_FROM}+ runs), "
             "degenerate = all runs equal (no spread observed, not certainty)"]
    if "mdd_vs_best" in table and table["mdd_vs_best"].notna().any():
        lines.append(f"MDD: the smallest difference from the best detectable at the observed spread (alpha {ALPHA}, power {POWER}, "
                     f"paired where seeds match); seeds: runs per strategy that would detect {100 * difference:g} points")
    return "\n".join(lines)
