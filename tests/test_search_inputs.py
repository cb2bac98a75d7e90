"""The search block's lists and names given once, and one spelling of trial numbers and values from the trial lines to
``search-report``."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import optuna
import pytest
import yaml
from test_search import experiment_with_search

from cl_harness.cli import main
from cl_harness.strategies import StrategyInfo


@dataclass
class FlagConfig:
    """A strategy with a boolean and an integer parameter, searched by the tests below."""

    skip_head: bool = field(default=False, metadata={"help": "a boolean to search"})
    every: int = field(default=1, metadata={"ge": 1, "help": "an integer to search"})


FLAG = StrategyInfo(name="flag", config_cls=FlagConfig, build=lambda config, context: [], summary="does nothing")

LAMBDA = {"low": 10, "high": 1000, "log": True}
REPEATED = [
    ({"seeds": [], "spaces": {"ewc": {"ewc_lambda": LAMBDA}}}, "search.seeds", "list at least one seed"),
    ({"seeds": [0, 0], "spaces": {"ewc": {"ewc_lambda": LAMBDA}}}, "search.seeds[1]", "lists a seed twice"),
    ({"spaces": {"ewc": {"mode": {"choice": ["separate", "online", "separate"]}}}}, "search.spaces.ewc.mode.choice[2]",
     "lists a choice twice: 'separate'"),
    ({"spaces": {"ewc": {"training.lr": {"choice": [0.001, "1e-3"]}}}}, "search.spaces.ewc.training.lr.choice[1]",
     "lists a choice twice: 0.001"),
    ({"spaces": {"ewc": {"ewc_lambda": LAMBDA, "ewc.ewc_lambda": LAMBDA}}}, "search.spaces.ewc.ewc.ewc_lambda",
     "ewc.ewc_lambda is the same parameter as ewc_lambda; give it once"),
]


@pytest.mark.parametrize(("search", "key", "message"), REPEATED, ids=["no seed", "seed twice", "choice twice",
                                                                      "choice twice once converted", "parameter twice"])
def test_a_search_list_without_values_or_with_a_value_twice_is_refused(tmp_path, tiny_bert, capsys, search, key, message):
    path = experiment_with_search(tmp_path, tiny_bert, search)
    for command in (["validate", str(path)], ["run", str(path), "--search-only", "--tracking-uri", f"sqlite:///{tmp_path}/m.db"]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"{path}:" in err and f": {key}: " in err and message in err and "Traceback" not in err, err
        assert len(err.strip().splitlines()) <= 2, err  # the message and at most a hint


def test_an_unknown_parameter_of_a_single_plugin_strategy_lists_each_parameter_once(tmp_path, tiny_bert, capsys):
    path = experiment_with_search(tmp_path, tiny_bert, {"spaces": {"ewc": {"lamda": LAMBDA}}})
    assert main(["validate", str(path)]) == 2
    assert "it takes: decay, ewc_lambda, mode, or training.<param>" in capsys.readouterr().err


def flag_experiment(tmp_path, tiny_bert):
    """naive (over a range of lr) and the flag strategy (by import path, over skip_head and every), 3 trials each."""
    spaces = {"naive": {"training.lr": {"low": 1e-4, "high": 1e-2, "log": True}},
              "flag": {"skip_head": {"choice": [True, False]}, "every": {"low": 1, "high": 5, "type": "int"}}}
    return experiment_with_search(tmp_path, tiny_bert, {"n_trials": 3, "pruner": "none", "spaces": spaces},
                                  strategies=("naive", "test_search_inputs:FLAG"))


def scripted_training(monkeypatch, values):
    """Trials score ``values`` in turn (valid_acc), without training."""
    import cl_harness.search.run as search_run
    from cl_harness.runner.run import RunResult

    scores = iter(values)

    def train(plan, reporter, show_progress=False):
        return RunResult(plan.strategy.label, plan.seed, ["t1", "t2"], [0.5, 0.5], status="FINISHED",
                         metrics={"valid_acc": next(scores)})

    monkeypatch.setattr(search_run, "train_and_evaluate", train)


def reported(report: str, label: str) -> list[str]:
    """The trial runs ``search-report`` lists for a strategy, in its order."""
    return [line.split()[0] for line in report.splitlines() if line.startswith(f"  {label}/trial")]


def test_trials_are_numbered_from_0_everywhere_and_the_report_shows_values_as_yaml_does(tmp_path, tiny_bert, monkeypatch,
                                                                                      capsys, recwarn):
    """naive's trials tie (its best is trial 0); flag's trial 1 ties trial 2 for best. The trial lines, the best line,
    MLflow, best_params.yaml and the report all call flag's best trial 1; the report lists each strategy's best trial
    first, values unquoted (``skip_head=true``) as the parent's best tags spell them, and no Optuna warning."""
    from mlflow import MlflowClient

    path = flag_experiment(tmp_path, tiny_bert)
    scripted_training(monkeypatch, [0.5, 0.5, 0.5] + [0.5, 0.75, 0.75])
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    assert main(["run", str(path), "--tracking-uri", uri, "--no-progress", "--search-only"]) == 0
    out = capsys.readouterr().out
    lines = [line.split(": ")[1] for line in out.splitlines() if line.startswith("search flag: trial ")]
    assert lines == ["trial 0 (1 of 3)", "trial 1 (2 of 3)", "trial 2 (3 of 3)"], out
    assert "search flag: best valid_acc 75.0% (trial 1;" in out
    (best_params,) = (tmp_path / "runs").glob("*/search-*/best_params.yaml")
    best = yaml.safe_load(best_params.read_text())["flag"]
    assert best["trial"] == 1

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("cl_harness.role") == "search"]
    trials = {r.info.run_name: r.data.tags for r in runs if r.data.tags.get("cl_harness.role") == "trial"}
    assert sorted(trials) == [f"{label}/trial{n}/seed0" for label in ("flag", "naive") for n in (0, 1, 2)]
    flag = "true" if best["params"]["skip_head"] else "false"
    assert parent.data.tags["best.flag.skip_head"] == trials["flag/trial1/seed0"]["param.skip_head"] == flag

    recwarn.clear()
    assert main(["search-report", "tiny", "--tracking-uri", uri, "--out", str(tmp_path / "report")]) == 0
    report = capsys.readouterr().out
    assert reported(report, "flag") == ["flag/trial1/seed0", "flag/trial2/seed0", "flag/trial0/seed0"], report
    assert reported(report, "naive") == ["naive/trial0/seed0", "naive/trial1/seed0", "naive/trial2/seed0"], report
    assert f"skip_head={flag}, every={best['params']['every']}" in report and "'" not in report.split("\n\n", 1)[1], report
    assert "importances: not computable (every finished trial has the same valid_acc)" in report
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)], [str(w.message) for w in recwarn]


def study_with(values):
    """An in-memory study whose trials over x in [0, 1] scored ``values``."""
    study = optuna.create_study(direction="maximize")
    for index, value in enumerate(values):
        study.add_trial(optuna.trial.create_trial(params={"x": index / len(values)}, value=value,
                                                  distributions={"x": optuna.distributions.FloatDistribution(0, 1)}))
    return study


def test_importances_are_computed_without_optunas_warning_when_the_best_trials_are_all_trials():
    from cl_harness.search.cli_hooks import importances_line

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert importances_line(study_with([0.5, 0.5, 0.5])) == "not computable (every finished trial has the same valid_acc)"
        assert importances_line(study_with([0.5] + [0.4] * 11)).startswith("x ")  # its top 10% (2 trials) take every trial
        assert importances_line(study_with([0.5])) is None
