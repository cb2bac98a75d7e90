"""Every regularisation and distillation strategy, at its default hyperparameters, changes training.

SI at its old default (si_lambda 1.0) trained to an accuracy matrix identical to naive's, to every
digit; a default that does nothing makes a comparison meaningless. Each strategy here runs at its
defaults on the same tiny stream, seed and order as naive, and its accuracy matrix must differ.
"""

from __future__ import annotations

import pytest
from conftest import write_demo_stream, write_experiment

TASK_IL = ["ewc", {"name": "online_ewc", "plugins": [{"ewc": {"mode": "online"}}]}, "si", "mas", "rwalk", "lwf", "der"]
DOMAIN_IL = ["lfl"]  # LFL freezes the shared head: domain-incremental only


def run_all(directory, bert, scenario, strategies):
    from cl_harness.config.loader import load_experiment
    from cl_harness.grid.prepare import check_experiment, prepare_experiment
    from cl_harness.runner.run import train_and_evaluate

    write_demo_stream(directory, scenario, per_class=20, tasks=3)
    path = write_experiment(directory, bert, ["naive", *strategies], epochs=2)
    prepared = prepare_experiment(check_experiment(load_experiment(path)), cache=None)
    return {p.strategy.label: train_and_evaluate(prepared.run_plan(p), show_progress=False).matrix for p in prepared.runs}


@pytest.fixture(scope="module")
def matrices(tmp_path_factory, tiny_bert):
    out = run_all(tmp_path_factory.mktemp("task"), tiny_bert, "task_incremental", TASK_IL)
    domain = run_all(tmp_path_factory.mktemp("domain"), tiny_bert, "domain_incremental", DOMAIN_IL)
    out.update({name: m for name, m in domain.items() if name != "naive"}, naive_domain=domain["naive"])
    return out


@pytest.mark.parametrize("strategy", ["ewc", "online_ewc", "si", "mas", "rwalk", "lwf", "der", "lfl"])
def test_the_default_hyperparameters_change_the_accuracy_matrix(matrices, strategy):
    naive = matrices["naive_domain" if strategy in DOMAIN_IL else "naive"]
    mine = matrices[strategy]
    assert len(mine) == len(naive) == 3
    differences = [abs(a - b) for row, base in zip(mine, naive) for a, b in zip(row, base)]
    assert max(differences) >= 0.05, f"{strategy} at its defaults trained like naive: {mine} vs {naive}"
