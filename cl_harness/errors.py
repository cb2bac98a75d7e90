"""The one error type users see: a configuration or input problem, with where it is and what is allowed."""

from __future__ import annotations

from pathlib import Path


class ConfigError(Exception):
    """Bad user input, reported as ``file:line: key.path: message (hint)`` and exit code 2."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        key: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.key = key
        self.hint = hint

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "") + ": "
        key = f"{self.key}: " if self.key else ""
        hint = f"\n  hint: {self.hint}" if self.hint else ""
        return f"{where}{key}{self.message}{hint}"


class HubUnreachableError(ConfigError):
    """A stream task that reads the Hugging Face hub while the hub cannot be reached (offline or no network)."""


class TrainingError(Exception):
    """A run that failed while training (for example a non-finite loss); other runs may go on."""


class TrackingStoreError(Exception):
    """The tracking store failed in a worker process; the command stops with exit 3, finished tasks checkpointed."""
