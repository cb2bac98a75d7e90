"""Generative backbones get what encoder runs guarantee: validation splits and the search, prefix sharing, nfr,
precision and length bucketing (resume: tests/test_resume.py, parametrized by backbone kind)."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from generative_helpers import build_tiny_llama, run_generative, write_generative_experiment

from cl_harness.config.loader import load_experiment
from cl_harness.grid.experiment import run_experiment
from cl_harness.grid.prepare import check_experiment, prepare_experiment
from cl_harness.runner.run import train_and_evaluate
from cl_harness.tracking import schema

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run faster on one thread

FAST = {"epochs": 3, "batch_size": 4, "lr": 3e-3}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from conftest import demo_words

    return build_tiny_llama(tmp_path_factory.mktemp("llama"), demo_words())


def with_validation(path, **experiment):
    """The experiment at ``path`` with a validation split on each task of its stream, and ``experiment``'s keys."""
    stream = path.parent / "stream.yaml"
    data = yaml.safe_load(stream.read_text())
    for task in data["tasks"]:
        task["valid_per_class"] = 4
    stream.write_text(yaml.safe_dump(data, sort_keys=False))
    config = {**yaml.safe_load(path.read_text()), **experiment}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def prepared_of(path):
    return prepare_experiment(check_experiment(load_experiment(path)))


def test_a_search_on_a_language_model_scores_its_trials_on_validation_data(tmp_path, llama):
    from cl_harness.search.config import parse_search
    from cl_harness.search.run import run_search

    search = {"n_trials": 2, "pruner": "none", "spaces": {"lwf": {"alpha": {"low": 0.1, "high": 10.0, "log": True}}}}
    path = with_validation(write_generative_experiment(tmp_path, llama, "causal_lm", ["lwf"], tasks=2, **FAST), search=search)
    checked = check_experiment(load_experiment(path))
    plan = parse_search(checked.loaded.config.search, checked.strategies, checked.loaded.source, True)
    (result,) = run_search(prepare_experiment(checked), plan, tmp_path / "search")
    import optuna

    trials = optuna.load_study(study_name="lwf", storage=f"sqlite:///{tmp_path / 'search' / 'search.db'}").trials
    assert result.n_complete == 2 and all(math.isfinite(t.value) and 0.0 <= t.value <= 1.0 for t in trials)
    assert all(t.intermediate_values for t in trials)  # per-step validation accuracy, as encoder trials report


def test_a_run_logs_validation_rows_and_nfr(tmp_path, llama):
    result, run = run_generative(with_validation(write_generative_experiment(tmp_path, llama, "causal_lm", ["naive"], tasks=2, **FAST)))
    assert len(result.valid_matrix) == 2 and all(0.0 <= v <= 1.0 for row in result.valid_matrix for v in row)
    assert schema.NFR_METRIC in result.metrics and schema.VALID_ACC_METRIC in result.metrics
    assert len(run.state.correct) == 3 and all(c is not None for step in run.state.correct for c in step)  # per-example hits


def test_prefix_sharing_forks_task_1_into_matrices_equal_to_unshared_runs(tmp_path, llama):
    strategies = ["naive", {"lwf": {"alpha": 2.0}}, {"replay": {"mem_size": 8}}, "ewc"]
    prepared = prepared_of(write_generative_experiment(tmp_path, llama, "causal_lm", strategies, tasks=2, **FAST))
    assert [planned.prefix is not None for planned in prepared.runs] == [True] * 4  # all four train task 1 as naive
    shared = run_experiment(prepared, f"sqlite:///{tmp_path}/mlflow.db", show_progress=False)
    unshared = [train_and_evaluate(prepared.run_plan(planned), None, False) for planned in prepared.runs]
    for got, want in zip(shared, unshared):
        assert got.status == want.status == "FINISHED" and got.initial == want.initial
        for row, expected in zip(got.matrix, want.matrix):
            assert row == pytest.approx(expected, abs=1e-6), got.run_name
    assert all(r.metrics.get(schema.TRAIN_TIME_SAVED_METRIC) for r in shared)  # task 1 trained once, forked into all four


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precision_and_length_bucketing_train_a_language_model(tmp_path, llama, precision):
    path = write_generative_experiment(tmp_path, llama, "causal_lm", ["naive"], tasks=2, precision=precision, length_bucketing=True, **FAST)
    result, run = run_generative(path)
    assert result.status == "FINISHED" and run.model.autocast_dtype == {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    x = run.plan.tasks[0].train_inputs[:4]
    with torch.no_grad():
        half = run.model.eval()(x)
        run.model.autocast_dtype = None
        full = run.model(x)
    assert half.dtype == torch.float32 and not torch.equal(half, full)  # computed under autocast, handed on in float32
    assert torch.allclose(half, full, atol=0.1, rtol=0.05)
