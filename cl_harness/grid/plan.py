"""Expand an experiment into its runs: every (strategy, seed, task order) combination."""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cl_harness.config.experiment import ExperimentConfig
from cl_harness.config.yaml_io import Source
from cl_harness.strategies.registry import StrategySpec
from cl_harness.tracking.schema import run_name


@dataclass(frozen=True)
class PlannedRun:
    """One run of the grid."""

    strategy: StrategySpec
    seed: int
    order_index: int
    order: tuple[int, ...]  # positions of the stream's tasks, in training order
    training: tuple[tuple[str, Any], ...] = ()  # (field, value) replacing the experiment's training values, e.g. a search's best lr

    @property
    def name(self) -> str:
        return run_name(self.strategy.label, self.seed, self.order_index)


def resolve_orders(config: ExperimentConfig, task_names: list[str], source: Source) -> list[tuple[int, ...]]:
    """Task orders as index tuples; order 0 is the stream's own unless ``orders`` says otherwise."""
    count = len(task_names)
    if config.orders is not None:
        orders = []
        for index, order in enumerate(config.orders):
            if sorted(order) != sorted(task_names) or len(order) != count:
                raise source.error(
                    ("orders", index),
                    f"an order must name every task of the stream exactly once; got {order}",
                    hint=f"the stream's tasks are {task_names}",
                )
            orders.append(tuple(task_names.index(name) for name in order))
        if len(set(orders)) != len(orders):
            raise source.error(("orders",), "lists the same order twice")
        return orders
    wanted = config.permutations or 1
    if wanted > math.factorial(count):
        raise source.error(("permutations",), f"{count} tasks have only {math.factorial(count)} orders, asked for {wanted}")
    orders = [tuple(range(count))]
    rng = random.Random(config.order_seed)
    while len(orders) < wanted:
        candidate = tuple(rng.sample(range(count), count))
        if candidate not in orders:
            orders.append(candidate)
    return orders


def plan_runs(strategies: list[StrategySpec], seeds: list[int], orders: list[tuple[int, ...]],
              training: Mapping[str, Mapping[str, Any]] | None = None) -> list[PlannedRun]:
    """The grid, strategy-major: all seeds and orders of one strategy before the next.

    ``training`` maps a strategy label to the training values its runs use instead of the experiment's.
    """
    training = training or {}
    return [
        PlannedRun(spec, seed, order_index, order, tuple(training.get(spec.label, {}).items()))
        for spec, seed, (order_index, order) in itertools.product(strategies, seeds, enumerate(orders))
    ]
