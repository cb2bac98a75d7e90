"""The package's layout contracts: one owner of the MLflow store, no upward imports (see docs/extending.md)."""

from __future__ import annotations

import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "cl_harness"
MLFLOW_IMPORT = re.compile(r"^\s*(import mlflow\b|from mlflow\b)", re.M)
#: Where importing mlflow is allowed: the tracking package, and the ``ui`` command that starts MLflow's own UI.
MLFLOW_OWNERS = ("tracking/", "ui.py")


def test_only_tracking_imports_mlflow():
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in sorted(PACKAGE.rglob("*.py"))
        if MLFLOW_IMPORT.search(path.read_text(encoding="utf-8"))
        and not str(path.relative_to(PACKAGE).as_posix()).startswith(MLFLOW_OWNERS)
    ]
    assert offenders == [], f"import mlflow outside tracking/: {offenders}"


def test_the_check_sees_an_import(tmp_path):
    assert MLFLOW_IMPORT.search("x = 1\n    from mlflow import MlflowClient\n")
    assert MLFLOW_IMPORT.search("import mlflow\n")
    assert not MLFLOW_IMPORT.search("import mlflowish\n# see mlflow docs\n")
