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


def test_imports_point_down_the_layers_without_cycles():
    """pyproject's [tool.importlinter] contracts: layers (no upward import), no cycles, strategies and kinds independent."""
    import os
    import shutil
    import subprocess

    import pytest

    if shutil.which("lint-imports") is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(["lint-imports"], cwd=PACKAGE.parent, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_a_strategy_file_imports_no_sibling_strategy():
    """Every registered strategy's module imports shared helpers from ``strategies.common``, never another strategy's
    module (read from the registry, so a new strategy is covered by its registry line alone)."""
    import grimp

    from cl_harness.strategies import default_registry

    graph = grimp.build_graph("cl_harness")
    modules = {info.build.__module__ for info in default_registry()}
    offenders = sorted((a, b) for a in modules for b in modules if a != b and graph.direct_import_exists(importer=a, imported=b))
    assert offenders == [], f"a strategy imports a sibling strategy (move the shared part to strategies/common/): {offenders}"
    assert "cl_harness.strategies.ewc" in modules and "cl_harness.strategies.lwf" in modules


def test_the_sibling_import_check_sees_an_import():
    import grimp

    graph = grimp.build_graph("cl_harness")
    assert graph.direct_import_exists(importer="cl_harness.strategies.ewc", imported="cl_harness.strategies.common.importance")
