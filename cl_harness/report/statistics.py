"""Uncertainty and significance for a strategy comparison, from plain data (no store access).

Rules (one place, also shown in the report's definitions):

- **Interval:** a 95% interval for a strategy's mean over its finished runs. With 2-4 runs it is the
  Student t-interval ``mean ± t(0.975, n-1) · s / sqrt(n)``; with 5 or more runs it is a seeded
  percentile bootstrap of the mean (``BOOTSTRAP_RESAMPLES`` resamples). One run has no interval.
- **Pairwise test:** two strategies are compared on a metric with a *paired* test when both have runs
  for exactly the same (seed, order) pairs, at least 2 of them: the Wilcoxon signed-rank test with 6
  or more pairs, else the paired t-test (with 5 pairs or fewer the exact two-sided Wilcoxon p-value
  cannot go below 2/2^5 = 0.0625, so it could never reject at 0.05). Otherwise Welch's unequal-variance
  t-test, which needs 2 or more runs on each side. Identical values on both sides give p = 1.
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

T_INTERVAL, BOOTSTRAP, NO_INTERVAL = "t", "bootstrap", "none"
WILCOXON, PAIRED_T, WELCH, NO_TEST = "wilcoxon", "paired_t", "welch", "none"
ONE_RUN = "1 run: no interval"


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
    """The mean of ``values`` (NaNs dropped) with a t-interval (2-4 values) or a seeded percentile bootstrap (>= 5)."""
    clean = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    n = len(clean)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, NO_INTERVAL)
    mean = float(clean.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1, NO_INTERVAL)
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
    if set(left) == set(right) and len(left) >= 2:
        keys = sorted(left, key=repr)
        x, y = np.array([left[k] for k in keys]), np.array([right[k] for k in keys])
        diff = x - y
        test = WILCOXON if len(keys) >= WILCOXON_FROM else PAIRED_T
        if np.all(diff == 0):
            return PairTest(a, b, test, len(keys), 0.0, 1.0)
        if test == PAIRED_T and np.all(diff == diff[0]):  # constant non-zero difference: zero variance, t infinite
            return PairTest(a, b, test, len(keys), math.copysign(math.inf, diff[0]), 0.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = stats.wilcoxon(x, y) if test == WILCOXON else stats.ttest_rel(x, y)
        return PairTest(a, b, test, len(keys), float(result.statistic), float(result.pvalue))
    x, y = np.array(list(left.values())), np.array(list(right.values()))
    if len(x) < 2 or len(y) < 2:
        return PairTest(a, b, NO_TEST, 0, math.nan, math.nan)
    if np.ptp(x) == 0 and np.ptp(y) == 0:
        p = 1.0 if x[0] == y[0] else 0.0
        return PairTest(a, b, WELCH, 0, 0.0 if p == 1.0 else math.copysign(math.inf, x[0] - y[0]), p)
    result = stats.ttest_ind(x, y, equal_var=False)
    return PairTest(a, b, WELCH, 0, float(result.statistic), float(result.pvalue))


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
    """One strategy's interval and its corrected comparisons with the best strategy and with ``naive``."""

    strategy: str
    interval: Interval
    vs_best: PairTest | None
    p_vs_best: float
    vs_reference: PairTest | None
    p_vs_reference: float

    @property
    def significant_vs_best(self) -> bool:
        return not math.isnan(self.p_vs_best) and self.p_vs_best < ALPHA

    @property
    def significant_vs_reference(self) -> bool:
        return not math.isnan(self.p_vs_reference) and self.p_vs_reference < ALPHA


def compare_strategies(
    runs: Mapping[str, Mapping[Hashable, float]], reference: str = REFERENCE, seed: int = BOOTSTRAP_SEED
) -> dict[str, StrategyStats]:
    """Per strategy: interval, and Holm-corrected tests vs the best (highest mean) strategy and vs ``reference``.

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
        name: StrategyStats(name, intervals[name], *lookup(name, best), *lookup(name, reference))
        for name in runs
    }


# --- table columns --------------------------------------------------------------------------------

#: The columns ``statistics_columns`` adds to the comparison table (raw values, fractions not percent).
STAT_COLUMNS = (
    "acc_ci_low", "acc_ci_high", "acc_ci_method",
    "p_vs_best", "test_vs_best", "significant_vs_best",
    "p_vs_naive", "test_vs_naive", "significant_vs_naive",
)
STAT_DEFINITIONS = {
    "acc 95% CI": (f"95% interval of the mean final accuracy: t-interval with 2-{BOOTSTRAP_FROM - 1} runs, seeded percentile "
                   f"bootstrap ({BOOTSTRAP_RESAMPLES} resamples) with {BOOTSTRAP_FROM} or more, shown clipped to [0, 100] % (the CSV "
                   f"keeps the raw bounds); '{ONE_RUN}' for a single run."),
    "p vs best / p vs naive": (
        "two-sided p-value of the final accuracy against the best strategy / naive, Holm-Bonferroni corrected over all pairs "
        f"in the table; paired (Wilcoxon signed-rank with {WILCOXON_FROM}+ pairs, paired t-test with fewer) when both "
        f"strategies ran the same seeds and orders, Welch's t-test otherwise; '*' marks p < {ALPHA}; '-' where no test "
        "is possible (fewer than 2 runs a side)."
    ),
}


def statistics_columns(runs: Mapping[str, Mapping[Hashable, float]], order: Sequence[str]):
    """A DataFrame of STAT_COLUMNS, one row per strategy of ``order``, from ``runs`` (strategy -> {(seed, order): acc})."""
    import pandas as pd

    computed = compare_strategies(runs)
    rows = []
    for name in order:
        s = computed[name]
        rows.append({
            "acc_ci_low": s.interval.low, "acc_ci_high": s.interval.high, "acc_ci_method": s.interval.method,
            "p_vs_best": s.p_vs_best, "test_vs_best": s.vs_best.test if s.vs_best else NO_TEST,
            "significant_vs_best": s.significant_vs_best,
            "p_vs_naive": s.p_vs_reference, "test_vs_naive": s.vs_reference.test if s.vs_reference else NO_TEST,
            "significant_vs_naive": s.significant_vs_reference,
        })
    return pd.DataFrame(rows, columns=list(STAT_COLUMNS))


def _p_cell(p: float, significant: bool) -> str:
    if math.isnan(p):
        return "-"
    return (f"{p:.3f}" if p >= 0.001 else "<0.001") + (" *" if significant else "")


def statistics_display(table, percent) -> tuple[list[str], list[list[str]]]:
    """Headers and per-row cells for the interval and p-value columns of a comparison table (none if absent)."""
    if "acc_ci_low" not in table:
        return [], [[] for _ in range(len(table))]
    best = table["strategy"].iloc[0] if len(table) and not math.isnan(table["acc_mean"].iloc[0]) else None
    has_reference = REFERENCE in set(table["strategy"])
    headers = ["acc 95% CI (%)", "p vs best"] + (["p vs naive"] if has_reference else [])
    cells = []
    for _, row in table.iterrows():
        if row["acc_ci_method"] == NO_INTERVAL:
            interval = ONE_RUN if int(row["n_finished"]) == 1 else "-"
        else:
            low, high = max(0.0, row["acc_ci_low"]), min(1.0, row["acc_ci_high"])  # accuracy cannot leave [0, 1]
            interval = f"[{percent(low)}, {percent(high)}]"
        vs_best = "best" if row["strategy"] == best else _p_cell(row["p_vs_best"], bool(row["significant_vs_best"]))
        line = [interval, vs_best]
        if has_reference:
            line.append("naive" if row["strategy"] == REFERENCE else _p_cell(row["p_vs_naive"], bool(row["significant_vs_naive"])))
        cells.append(line)
    return headers, cells
