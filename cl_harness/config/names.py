"""The one way a user's string (experiment name, strategy label, ...) becomes a file or folder name, and the one rule
for the characters of every name that is printed or logged (experiment, stream, task, strategy and label names)."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence

from cl_harness.errors import UNPRINTABLE_CATEGORIES

MAX_FILE_NAME = 120  # file systems allow 255 bytes; longer names keep a readable start and a hash of the whole


def file_name(text: str) -> str:
    """``text`` as one file or folder name: characters other than letters, digits and ``_.+-`` become ``_``, and leading
    dots too (``..`` never leaves the parent); a long name is cut and given a hash of the whole."""
    text = str(text)
    name = re.sub(r"[^A-Za-z0-9_.+-]", "_", text)
    name = re.sub(r"^\.+", lambda m: "_" * len(m.group()), name)
    if len(name) > MAX_FILE_NAME:
        name = name[:100] + "-" + hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return name or "_"


def first_collision(names: Sequence[str]) -> tuple[int, int] | None:
    """Indices ``(i, j)``, ``i < j``, of the first two distinct names that ``file_name`` maps to the same file on a
    case-insensitive file system (``my run`` and ``My_run``); None when every name has its own file."""
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        key = file_name(name).casefold()
        if key in seen and names[seen[key]] != name:
            return seen[key], index
        seen.setdefault(key, index)
    return None


# Names hold none of errors.UNPRINTABLE_CATEGORIES: control characters and separators break a printed table or line, or
# drive the terminal. Lone surrogates are no text at all: Python holds a byte that is not UTF-8 (in a ${VAR} value) or a
# JSON/YAML escape such as \ud800 as one, and neither UTF-8, a tokenizer nor MLflow takes it.
NAME_HINT = "names are printed and logged to MLflow: use letters, digits, spaces and punctuation"


def name_problem(text: str) -> str | None:
    """Why ``text`` cannot be a name that is printed or logged (``holds a control character (U+001B)``), or None."""
    if text.isascii() and text.isprintable():
        return None
    bad = next((c for c in text if unicodedata.category(c) in UNPRINTABLE_CATEGORIES), None)
    if bad is None:
        return None
    if unicodedata.category(bad) == "Cs":
        return f"holds a lone surrogate (U+{ord(bad):04X}), which is not text (a byte that is not UTF-8, or an escape such as \\ud800)"
    return f"holds a control character (U+{ord(bad):04X})"

