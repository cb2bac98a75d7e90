"""Anti-forgetting strategies: the registry and one module per strategy.

Public API for a user's own strategy: ``StrategyInfo`` (its typed config, builder and what it supports) and
``BuildContext`` (what its builder may read); docs/extending.md shows how to write and register one.
"""

from __future__ import annotations

from cl_harness.strategies import cumulative, in_context, joint, naive, zero_shot
from cl_harness.strategies import agem, der, er_ace, gdumb, gem, mir, replay
from cl_harness.strategies import ewc, lfl, lwf, mas, rwalk, si
from cl_harness.strategies import inc_lora, o_lora, seq_lora
from cl_harness.strategies.registry import BuildContext, StrategyInfo, StrategyRegistry
from cl_harness.strategies.user_plugins import installed_entry_points

__all__ = ["BuildContext", "StrategyInfo", "StrategyRegistry", "default_registry"]

# Each family lists its modules here; every module exposes INFO (a StrategyInfo).
BASELINE_MODULES = (naive, joint, cumulative, zero_shot, in_context)
REGULARIZATION_MODULES = (ewc, si, mas, rwalk, lwf, lfl)
REHEARSAL_MODULES = (replay, der, agem, gem, gdumb, mir, er_ace)
PARAMETER_EFFICIENT_MODULES = (seq_lora, inc_lora, o_lora)


def default_registry(installed: bool = True) -> StrategyRegistry:
    """A registry holding every built-in strategy, registered explicitly here, and (``installed``) the strategies that
    installed packages declare in the entry-point group ``cl_harness.strategies`` (imported when listed or used)."""
    registry = StrategyRegistry()
    for module in BASELINE_MODULES + REGULARIZATION_MODULES + REHEARSAL_MODULES + PARAMETER_EFFICIENT_MODULES:
        registry.register(module.INFO)
    if installed:
        registry.add_installed(installed_entry_points())
    return registry
