"""Test-only user plugins for tests/bad_inputs: valid Avalanche plugins that break a rule the harness checks."""

from __future__ import annotations

from avalanche.core import SupervisedPlugin


class UnpicklablePlugin(SupervisedPlugin):
    """A plugin holding a lambda: it trains, but checkpoints and worker processes cannot pickle it."""

    def __init__(self) -> None:
        super().__init__()
        self.transform = lambda loss: loss
