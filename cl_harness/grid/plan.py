"""Expand an experiment into its runs: every (strategy, seed, task order) combination."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import math
import random
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cl_harness.config.experiment import ExperimentConfig
from cl_harness.config.yaml_io import Source
from cl_harness.runner.prefix import PREFIX_TASKS
from cl_harness.strategies.registry import StrategySpec
from cl_harness.tracking.schema import run_name

PREFIX_LABEL = "prefix"  # a prefix unit's name: prefix/seed<k>/order<m>


@dataclass(frozen=True)
class PrefixUnit:
    """Task 1 of one seed and order, trained once by naive and forked into each run that shares it (runner/prefix.py)."""

    seed: int
    order_index: int
    order: tuple[int, ...]
    runs: tuple[str, ...]  # the names of the runs that start from it
    training: tuple[tuple[str, Any], ...] = ()  # its runs' own training values (a search's best), if any

    @property
    def name(self) -> str:
        base = run_name(PREFIX_LABEL, self.seed, self.order_index)
        return base + "/" + "-".join(f"{key}={value}" for key, value in self.training) if self.training else base


@dataclass(frozen=True)
class PlannedRun:
    """One run of the grid."""

    strategy: StrategySpec
    seed: int
    order_index: int
    order: tuple[int, ...]  # positions of the stream's tasks, in training order
    training: tuple[tuple[str, Any], ...] = ()  # (field, value) replacing the experiment's training values, e.g. a search's best lr
    prefix: PrefixUnit | None = None  # the shared prefix it starts from, if any

    @property
    def name(self) -> str:
        return run_name(self.strategy.label, self.seed, self.order_index)

    @property
    def key(self) -> str:
        """The run's identity within its comparison: a hash of its own settings (strategy, its training values, seed,
        task order), so that the same run is found again whatever else the grid holds."""
        return settings_key({"strategy": self.strategy.as_dict(), "training": dict(self.training), "seed": self.seed,
                             "order": list(self.order)})


def settings_key(settings: Mapping[str, Any]) -> str:
    """A short hash of plain settings (the same settings give the same key, in any key order)."""
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


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
              training: Mapping[str, Mapping[str, Any]] | None = None, share_prefix: bool = False) -> list[PlannedRun]:
    """The grid, strategy-major: all seeds and orders of one strategy before the next.

    ``training`` maps a strategy label to the training values its runs use instead of the experiment's;
    ``share_prefix``: see ``share_prefixes``.
    """
    training = training or {}
    runs = [
        PlannedRun(spec, seed, order_index, order, tuple(sorted(training.get(spec.label, {}).items())))
        for spec, seed, (order_index, order) in itertools.product(strategies, seeds, enumerate(orders))
    ]
    return share_prefixes(runs) if share_prefix else runs


def share_prefixes(runs: list[PlannedRun]) -> list[PlannedRun]:
    """Link the runs that train task 1 as naive does to one prefix unit per seed, order and training values, where two or more do."""
    groups: dict[tuple, list[PlannedRun]] = defaultdict(list)
    for planned in runs:
        if planned.strategy.naive_prefix_tasks >= PREFIX_TASKS:
            groups[(planned.seed, planned.order_index, planned.training)].append(planned)
    linked = {}
    for (seed, order_index, training), group in groups.items():
        if len(group) > 1:
            unit = PrefixUnit(seed, order_index, group[0].order, tuple(p.name for p in group), training)
            linked.update({p.name: dataclasses.replace(p, prefix=unit) for p in group})
    return [linked.get(p.name, p) for p in runs]


def share_pending_prefixes(runs: list[PlannedRun], done: set[str]) -> list[PlannedRun]:
    """The runs with their prefixes shared among the runs not done yet only: a finished run forks nothing, so a run added
    to a finished grid trains task 1 itself rather than a prefix for itself alone."""
    if not any(p.prefix for p in runs):
        return runs
    bare = [dataclasses.replace(p, prefix=None) for p in runs]
    linked = {p.name: p for p in share_prefixes([p for p in bare if p.name not in done])}
    return [linked.get(p.name, p) for p in bare]


def prefix_units(runs: list[PlannedRun]) -> list[PrefixUnit]:
    """The grid's prefix units, in the order of their first run."""
    return list(dict.fromkeys(p.prefix for p in runs if p.prefix is not None))
