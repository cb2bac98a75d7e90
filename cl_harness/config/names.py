"""The one way a user's string (experiment name, strategy label, ...) becomes a file or folder name."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence

MAX_FILE_NAME = 120  # file systems allow 255 bytes; longer names keep a readable start and a hash of the whole


def file_name(text: str) -> str:
    """``text`` as one file or folder name: characters other than letters, digits and ``_.+-`` become ``_``, and leading
    dots too (``..`` never leaves the parent); a long name is cut and given a hash of the whole."""
    text = str(text)
    name = re.sub(r"[^A-Za-z0-9_.+-]", "_", text)
    name = re.sub(r"^\.+", lambda m: "_" * len(m.group()), name)
    if len(name) > MAX_FILE_NAME:
        name = name[:100] + "-" + hashlib.sha256(text.encode()).hexdigest()[:12]
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
