"""The one error type users see: a configuration or input problem, with where it is and what is allowed."""

from __future__ import annotations

import unicodedata
from pathlib import Path

#: Unicode categories of characters that are not text to print: control characters (C0, DEL, C1; ESC starts an ANSI
#: sequence), lone surrogates, and the line and paragraph separators (they break a printed line).
UNPRINTABLE_CATEGORIES = frozenset(("Cc", "Cs", "Zl", "Zp"))
MAX_MESSAGE_CHARS = 400  # a message never echoes more than a short excerpt of a user's file
MAX_KEY_CHARS = 120


def clip(text: str, limit: int) -> str:
    """``text`` on one line, cut to ``limit`` characters (marked with ``...``); other control characters and lone
    surrogates escaped (``\\x1b``), so that a user's value quoted in a message cannot drive the terminal."""
    text = " ".join(str(text).split()) if "\n" in str(text) or "\r" in str(text) else str(text)
    if not text.isprintable():
        text = "".join(c if c.isprintable() or c == " " or not _unprintable(c) else ascii(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _unprintable(char: str) -> bool:
    """A character of ``UNPRINTABLE_CATEGORIES``: what a terminal acts on, or what is not text."""
    return unicodedata.category(char) in UNPRINTABLE_CATEGORIES


def short_repr(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: what a message may quote of a user's value (true, false and null
    spelt as YAML and JSON write them)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, (str, bytes)) and len(value) > 4 * limit:
        value = value[: 4 * limit]  # never repr a whole file
    elif isinstance(value, (list, dict)) and len(value) > limit:
        return f"<{type(value).__name__} of {len(value)} items>"
    try:
        text = repr(value)
    except RecursionError:
        text = f"<{type(value).__name__}>"
    return clip(text, limit)


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
        origin: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = str(file) if file is not None else None
        self.line = line
        self.key = key
        self.hint = hint
        self.origin = origin  # where the value came from when not from the file's line, e.g. "--set training.lr=0"

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = self.file + (f":{self.line}" if self.line else "") + ": "
        if self.origin:
            where += f"{clip(self.origin, MAX_KEY_CHARS)}: "
        key = f"{clip(self.key, MAX_KEY_CHARS)}: " if self.key else ""
        hint = f"\n  hint: {clip(self.hint, MAX_MESSAGE_CHARS)}" if self.hint else ""
        return f"{where}{key}{clip(self.message, MAX_MESSAGE_CHARS)}{hint}"


class HubUnreachableError(ConfigError):
    """A stream task that reads the Hugging Face hub while the hub cannot be reached (offline or no network)."""


def raised_at(exc: BaseException) -> str | None:
    """Where ``exc`` was raised: ``file:line in function`` of its innermost frame, or None without a traceback."""
    traceback = exc.__traceback__
    while traceback is not None and traceback.tb_next is not None:
        traceback = traceback.tb_next
    if traceback is None:
        return None
    code = traceback.tb_frame.f_code
    return f"{clip(code.co_filename, 160)}:{traceback.tb_lineno} in {clip(code.co_name, 60)}"


def error_line(exc: BaseException) -> str:
    """An unexpected error on one line: its type, its message and where it was raised."""
    where = raised_at(exc)
    try:
        message = clip(exc, 300)
    except Exception:  # noqa: BLE001 - an exception whose own __str__ fails
        message = "(its message cannot be printed)"
    return f"{type(exc).__name__}: {message}" + (f" (raised at {where})" if where else "")


class TrainingError(Exception):
    """A run that failed while training (for example a non-finite loss); other runs may go on."""


class TrackingStoreError(Exception):
    """The tracking store failed in a worker process; the command stops with exit 3, the runs' checkpoints kept."""
