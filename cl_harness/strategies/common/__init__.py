"""Helpers shared by several strategies (a strategy file imports these, never a sibling strategy)."""
