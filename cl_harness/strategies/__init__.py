"""Anti-forgetting strategies: the registry and one module per strategy."""

from __future__ import annotations

from cl_harness.strategies import naive
from cl_harness.strategies.registry import StrategyRegistry


def default_registry() -> StrategyRegistry:
    """A registry holding every built-in strategy, registered explicitly here."""
    registry = StrategyRegistry()
    for module in (naive,):
        registry.register(module.INFO)
    return registry
