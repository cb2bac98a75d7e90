"""Where a strategy stands in its stream: consolidation after the last task weighs a penalty no later task pays."""

from __future__ import annotations


def more_tasks_follow(strategy) -> bool:
    """True when the experience being trained is not the last of its stream (Avalanche's ``current_experience``)."""
    experience = strategy.experience
    return experience.current_experience < len(experience.origin_stream) - 1
