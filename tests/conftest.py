"""Shared fixtures: offline mode, a tiny BERT built from a config (cl_harness.testing), the shared benchmark data."""

from __future__ import annotations

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"  # transformers and datasets read this at import
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The token cache goes to a folder of this test session, never to the user's ~/.cache.
os.environ["CL_HARNESS_CACHE"] = tempfile.mkdtemp(prefix="cl-harness-test-cache-")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from cl_harness.testing import build_tiny_bert, demo_words, write_demo_stream, write_experiment  # noqa: E402, F401 (one copy, public)

REPO = Path(__file__).resolve().parents[1]


def local_ray_cluster(*import_paths: Path):
    """A local Ray cluster with 2 CPUs whose workers import this checkout, tests/ and ``import_paths`` (a generator for a
    module fixture: ``yield from local_ray_cluster(...)``); skipped without the ray extra."""
    ray = pytest.importorskip("ray", reason="the ray extra is not installed (pip install 'cl-harness[ray]')")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PYTHONPATH", os.pathsep.join(str(p) for p in (REPO, REPO / "tests", *import_paths)))  # workers inherit it
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        try:
            yield ray
        finally:
            ray.shutdown()


def shared_data_dir() -> Path:
    """The real task data beside the repository (``../shared/data/cl_benchmark``), or $CL_BENCHMARK_DIR."""
    return Path(os.environ.get("CL_BENCHMARK_DIR", REPO.parent / "shared" / "data" / "cl_benchmark"))


@pytest.fixture(scope="session")
def benchmark_dir() -> Path:
    path = shared_data_dir()
    if not (path / "README.md").is_file():
        pytest.skip(f"shared benchmark data not found at {path}")
    return path


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory) -> Path:
    """A tiny BERT (2 layers, hidden 32) whose vocabulary covers the demo sentences."""
    return build_tiny_bert(tmp_path_factory.mktemp("tiny-bert"), demo_words())


@pytest.fixture
def tiny_run(tmp_path, tiny_bert):
    """``tiny_run(strategy_entry, scenario=..., **training)`` trains one strategy on a tiny demo stream.

    Returns ``(result, strategy)``: the RunResult (accuracy matrix, metrics) and the Avalanche
    template after training, so tests can inspect plugins. Nothing is written to MLflow.
    """
    from cl_harness.config.loader import load_experiment
    from cl_harness.grid.prepare import check_experiment, prepare_experiment
    from cl_harness.runner.run import TrainingRun

    def run(entry, scenario: str = "class_incremental", per_class: int = 20, tasks: int = 2, **training):
        write_demo_stream(tmp_path, scenario, per_class, tasks)
        path = write_experiment(tmp_path, tiny_bert, [entry], **training)
        prepared = prepare_experiment(check_experiment(load_experiment(path)))
        run = TrainingRun(prepared.run_plan(prepared.runs[0]), show_progress=False)
        return run.execute(), run.strategy

    return run


def pytest_sessionfinish(session, exitstatus):
    """Remove this session's token cache."""
    import shutil

    shutil.rmtree(os.environ["CL_HARNESS_CACHE"], ignore_errors=True)


@pytest.fixture
def one_thread():
    """Tiny models run faster on one thread than on two busy ones (no synchronisation between them)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A tiny random Llama and its word-level tokenizer (tests/generative_helpers.py), built once per test module."""
    from generative_helpers import build_tiny_llama

    return build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), demo_words())


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    """A tiny random T5 and its word-level tokenizer (tests/generative_helpers.py), built once per test module."""
    from generative_helpers import build_tiny_t5

    return build_tiny_t5(tmp_path_factory.mktemp("tiny-t5"), demo_words())


def write_config(tmp_path: Path, experiment: str, stream: str) -> Path:
    """``stream`` as stream.yaml and ``experiment`` (dedented) as exp.yaml in ``tmp_path``; the experiment's path."""
    import textwrap

    (tmp_path / "stream.yaml").write_text(stream)
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(experiment))
    return path


def config_error(path: Path, *args, **kwargs):
    """The ConfigError that loading the experiment at ``path`` raises."""
    from cl_harness.config.loader import load_experiment
    from cl_harness.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        load_experiment(path, *args, **kwargs)
    return info.value
