"""Task kinds: the registry and one module per kind."""

from __future__ import annotations

from cl_harness.tasks import classification, instruction, mlm
from cl_harness.tasks.registry import TaskKindRegistry

# Every module exposes INFO (a TaskKindInfo).
KIND_MODULES = (classification, mlm, instruction)


def default_kinds() -> TaskKindRegistry:
    """A registry holding every built-in task kind, registered explicitly here."""
    registry = TaskKindRegistry()
    for module in KIND_MODULES:
        registry.register(module.INFO)
    return registry
