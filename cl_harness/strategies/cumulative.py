"""Cumulative: at each step retrain on the union of every task seen so far."""

from __future__ import annotations

from dataclasses import dataclass

from cl_harness.strategies.registry import BuildContext, StrategyInfo


@dataclass
class CumulativeConfig:
    """Cumulative takes no parameters."""


def build(config: CumulativeConfig, context: BuildContext) -> list:
    """No plugins: the runner trains step i on tasks 1..i (``train_data="cumulative"``)."""
    return []


INFO = StrategyInfo(
    name="cumulative",
    config_cls=CumulativeConfig,
    build=build,
    summary="at step i, train on all data of tasks 1..i (unbounded-memory reference)",
    paper="reference point, e.g. Lomonaco et al. 2021 (Avalanche)",
    train_data="cumulative",
    naive_prefix_tasks=1,  # step 1 trains on task 1's data alone
)
