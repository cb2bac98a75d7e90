"""Known third-party deprecation warnings kept out of the harness's loops, where they would break the progress bars.

Avalanche's ``@deprecated`` wrapper calls ``warnings.simplefilter("once", DeprecationWarning)`` on every call, which
overrides any ``ignore`` filter set before; so the warnings are dropped where they are shown instead. Any other
warning is still shown, written above the progress bars.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import PurePath

from tqdm.auto import tqdm

#: Packages whose deprecation notices a user of the harness cannot act on.
KNOWN_SOURCES = frozenset({"avalanche", "torch", "transformers", "peft", "mlflow", "datasets", "tokenizers"})
KNOWN_CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)
AVALANCHE_DEPRECATION = ("Call to deprecated function", "Call to deprecated class")


def is_known(message: Warning | str, category: type[Warning], filename: str) -> bool:
    """Whether a warning is a third-party deprecation notice the harness silences."""
    if not issubclass(category, KNOWN_CATEGORIES):
        return False
    if str(message).startswith(AVALANCHE_DEPRECATION):
        return True
    return bool(KNOWN_SOURCES.intersection(PurePath(filename).parts))


@contextmanager
def known_warnings_silenced() -> Iterator[None]:
    """Inside: known third-party deprecation warnings are dropped, others written above any progress bar."""
    with warnings.catch_warnings():  # restores the filters and showwarning on the way out

        def show(message, category, filename, lineno, file=None, line=None) -> None:
            if is_known(message, category, filename):
                return
            tqdm.write(warnings.formatwarning(message, category, filename, lineno, line).rstrip(), file=file or sys.stderr)

        warnings.showwarning = show
        yield
