"""Value limits every config shares: finite numbers, seeds numpy accepts, names the store and file system accept."""

from __future__ import annotations

import math
import re
from typing import Any

from cl_harness.config.names import NAME_HINT, name_problem
from cl_harness.config.yaml_io import KeyPath, Source
from cl_harness.errors import short_repr

SEED_LIMIT = 2**32  # numpy's seeds: 0 <= seed < 2**32
MAX_NAME_CHARS = 200  # experiment and stream names: MLflow names and folder names (255 bytes) must hold them
_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?|[-+]?\.?(inf|infinity|nan)", re.IGNORECASE)


def is_seed_key(name: str) -> bool:
    """Keys holding seeds: ``seed``, ``seeds`` and ``*_seed``."""
    return name in ("seed", "seeds") or name.endswith("_seed")


def check_finite(value: float, source: Source, path: KeyPath) -> float:
    """``value`` if it is a finite number, else a ConfigError at ``path``."""
    if not math.isfinite(value):
        raise source.error(path, f"must be a finite number, got {value}", hint="e.g. 1e-3; inf, nan and 1e999 are refused")
    return value


def check_seed_key(name: str, value: Any, source: Source, path: KeyPath) -> None:
    """A seed key (or a list of them) must hold integers in [0, 2**32)."""
    if not is_seed_key(name):
        return
    values = value if isinstance(value, list) else [value]
    for index, seed in enumerate(values):
        if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed < SEED_LIMIT:
            where = path + (index,) if isinstance(value, list) else path
            raise source.error(where, f"a seed must be in [0, 2**32), got {seed}")


def check_numbers(data: Any, source: Source, path: KeyPath = ()) -> None:
    """Refuse non-finite numbers anywhere in plain YAML data (``.inf``, ``.nan``, ``1e999``), also under free-form keys."""
    if isinstance(data, dict):
        for key, value in data.items():
            check_numbers(value, source, path + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            check_numbers(value, source, path + (index,))
    elif isinstance(data, float) and not isinstance(data, bool):
        check_finite(data, source, path)
    elif isinstance(data, str) and len(data) < 40 and _NUMBER.fullmatch(data.strip()) and any(c.isdigit() for c in data):
        check_finite(float(data), source, path)


def check_name(value: str, source: Source, path: KeyPath, what: str = "name") -> None:
    """A name used for MLflow experiments, runs and folders: not empty, not only dots, at most MAX_NAME_CHARS."""
    if not value.strip():
        raise source.error(path, f"the {what} is empty", hint="give a short name, e.g. my-experiment")
    if len(value) > MAX_NAME_CHARS:
        raise source.error(path, f"the {what} has {len(value)} characters; at most {MAX_NAME_CHARS} are allowed")
    check_printed_name(value, source, path, what)


def check_printed_name(value: str, source: Source, path: KeyPath, what: str) -> None:
    """A name that is printed and logged (experiment, stream, task, strategy): ``config.names.name_problem``'s rule."""
    problem = name_problem(value)
    if problem is not None:
        raise source.error(path, f"the {what} {short_repr(value, 60)} {problem}", hint=NAME_HINT)
