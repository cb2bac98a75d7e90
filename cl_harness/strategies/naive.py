"""Naive: plain sequential fine-tuning, the lower bound every strategy is compared with."""

from __future__ import annotations

from dataclasses import dataclass

from cl_harness.strategies.registry import BuildContext, StrategyInfo


@dataclass
class NaiveConfig:
    """Naive takes no parameters."""


def build(config: NaiveConfig, context: BuildContext) -> list:
    """No plugins: the base loop alone."""
    return []


INFO = StrategyInfo(
    name="naive",
    config_cls=NaiveConfig,
    build=build,
    summary="sequential fine-tuning on each task in turn, no protection against forgetting",
    paper="baseline (e.g. Lopez-Paz & Ranzato 2017)",
    naive_prefix_tasks=1,  # naive itself
)
