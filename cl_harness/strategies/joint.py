"""Joint training: one model trained once on all tasks together, the usual upper bound."""

from __future__ import annotations

from dataclasses import dataclass

from cl_harness.strategies.registry import BuildContext, StrategyInfo


@dataclass
class JointConfig:
    """Joint takes no parameters; its only row of the accuracy matrix is logged at step T."""


def build(config: JointConfig, context: BuildContext) -> list:
    """No plugins: the runner merges all tasks into one training set (``train_data="joint"``)."""
    return []


INFO = StrategyInfo(
    name="joint",
    config_cls=JointConfig,
    build=build,
    summary="train once on the union of all tasks (multi-task upper bound, not continual)",
    paper="reference point, e.g. Lopez-Paz & Ranzato 2017",
    train_data="joint",
    naive_prefix_tasks=0,  # trains on all tasks at once
)
