"""Per-strategy hyperparameter search: the search block's validation, the Optuna loop, resume, pruning, no test data."""

from __future__ import annotations

import dataclasses
import pickle

import optuna
import pytest
import torch
import yaml
from conftest import write_demo_stream, write_experiment

from cl_harness.cli import main
from cl_harness.search.config import ParamSpace, SearchConfig, SearchPlan
from cl_harness.search.run import BEST_PARAMS_FILE, TrialReporter, open_study, read_best_params, run_search


def experiment_with_search(directory, bert, search, strategies=("naive", "ewc"), valid=True):
    stream = write_demo_stream(directory, "task_incremental", per_class=12, tasks=2)
    if valid:
        stream.write_text(stream.read_text().replace("test_examples_per_class: 10", "test_examples_per_class: 10\n  valid_per_class: 4"))
    path = write_experiment(directory, bert, list(strategies))
    data = yaml.safe_load(path.read_text())
    data["search"] = search
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


BAD = [
    ({"ewc": {"ewc_lambda": {"low": 10, "high": 10}}}, "search.spaces.ewc.ewc_lambda.high", "empty range"),
    ({"ewc": {"ewc_lambda": {"low": 0, "high": 100, "log": True}}}, "search.spaces.ewc.ewc_lambda.low", "log range must be positive"),
    ({"ewc": {"training.learning_rate": {"low": 1e-5, "high": 1e-3}}}, "search.spaces.ewc.training.learning_rate", "unknown parameter"),
    ({"naive": {"ewc_lambda": {"low": 1, "high": 100}}}, "search.spaces.naive.ewc_lambda", "does not take 'ewc_lambda'"),
    ({"ewc": {"ewc_lamda": {"low": 1, "high": 100}}}, "search.spaces.ewc.ewc_lamda", "did you mean 'ewc_lambda'"),
    ({"lwf": {"alpha": {"low": 1, "high": 2}}}, "search.spaces.lwf", "no strategy labelled 'lwf'"),
    ({"ewc": {"ewc_lambda": {"low": 1, "high": 2, "step": 1}}}, "search.spaces.ewc.ewc_lambda.step", "unknown key"),
]


@pytest.mark.parametrize(("spaces", "key", "message"), BAD, ids=[b[2] for b in BAD])
def test_validate_refuses_a_bad_search_space_at_its_file_line_and_key(tmp_path, tiny_bert, capsys, spaces, key, message):
    path = experiment_with_search(tmp_path, tiny_bert, {"n_trials": 2, "spaces": spaces})
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"{path}:" in err and f": {key}" in err and message in err and "Traceback" not in err, err


def test_a_search_without_validation_data_is_refused(tmp_path, tiny_bert, capsys):
    path = experiment_with_search(tmp_path, tiny_bert, {"spaces": {"naive": {"training.lr": {"low": 1e-4, "high": 1e-2}}}}, valid=False)
    assert main(["validate", str(path)]) == 2
    assert "needs validation data" in capsys.readouterr().err


def test_a_dry_run_says_what_the_search_tunes_before_the_runs(tmp_path, tiny_bert, capsys):
    path = experiment_with_search(tmp_path, tiny_bert, {"n_trials": 3, "seeds": [0, 1], "spaces": {"ewc": {"ewc_lambda": {"low": 1, "high": 1e4, "log": True}}}})
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "search first: 3 trials per strategy on seed(s) 0, 1" in out and "tunes ewc_lambda" in out and "best parameters" in out
    assert out.index("search first") < out.index("planned run") and not (tmp_path / "runs").exists()
    assert main(["run", str(path), "--dry-run", "--skip-search"]) == 0
    assert "search: skipped (--skip-search)" in capsys.readouterr().out
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "(encoder)" in out and "search first: 3 trials per strategy" in out and "tunes ewc_lambda" in out


def test_a_dry_run_does_not_count_as_done_the_runs_a_search_will_retune(tmp_path, tiny_bert, capsys):
    # It listed a finished default-value ewc run as done; the real run then trained ewc again with the searched values.
    from cl_harness.grid.prepare import check_experiment
    from cl_harness.config.loader import load_experiment
    from cl_harness.runner.checkpoint import write_run_file
    from cl_harness.search.run import search_folder

    path = experiment_with_search(tmp_path, tiny_bert, {"n_trials": 2, "spaces": {"ewc": {"ewc_lambda": {"low": 1, "high": 1e4, "log": True}}}},
                                  strategies=("naive", "ewc"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert main(["run", str(path), "--skip-search", "--no-progress", "--tracking-uri", uri]) == 0  # default values, no search yet
    capsys.readouterr()
    assert main(["run", str(path), "--dry-run", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "1 already done" in out and "  done          naive/seed0/order0" in out and "  after search  ewc/seed0/order0" in out, out
    folder = search_folder(check_experiment(load_experiment(path)))
    write_run_file(folder / "best_params.yaml", {"ewc": {"params": {"ewc_lambda": 77.0}}})  # a finished search's pick
    assert main(["run", str(path), "--dry-run", "--skip-search", "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "1 already done" in out and "  to train  ewc/seed0/order0" in out, out


def prepared_for(path):
    from cl_harness.config.loader import load_experiment
    from cl_harness.grid.prepare import check_experiment, prepare_experiment
    from cl_harness.search.config import parse_search

    checked = check_experiment(load_experiment(path))
    plan = parse_search(checked.loaded.config.search, checked.strategies, checked.loaded.source, True)
    return prepare_experiment(checked, cache=None), plan


SEARCH = {"n_trials": 2, "pruner": "none", "spaces": {"ewc": {"training.lr": {"low": 1e-4, "high": 1e-2, "log": True},
                                                             "ewc_lambda": {"low": 10, "high": 1e4, "log": True}}}}


def corrupt_test_splits(prepared):
    """Every task's test examples replaced: other inputs, and every label the task's first class (so that even a model
    that predicts one class everywhere scores differently on them)."""
    encoded = []
    for task in prepared.encoded:
        inputs = task.test_inputs.flip(0).roll(1, dims=2)  # (n_test, 3, length)
        targets = task.test_targets - task.test_targets % 2  # the first class of each example's task
        encoded.append(dataclasses.replace(task, test_inputs=inputs, test_targets=targets))
    return dataclasses.replace(prepared, encoded=encoded)


def test_search_picks_best_params_on_validation_only_and_resumes(tmp_path, tiny_bert):
    path = experiment_with_search(tmp_path, tiny_bert, SEARCH)
    prepared, plan = prepared_for(path)
    from cl_harness.runner.run import train_and_evaluate

    test_accs = {"search": [], "blind": []}

    def recording(into):
        def train(*args, **kwargs):
            result = train_and_evaluate(*args, **kwargs)
            test_accs[into].append(result.metrics["acc"])
            return result
        return train

    (result,) = run_search(prepared, plan, tmp_path / "search", train=recording("search"))
    assert result.n_complete == 2 and result.best_value is not None and 0.0 <= result.best_value <= 1.0
    assert set(result.best_params) == {"training.lr", "ewc_lambda"} and 1e-4 <= result.best_params["training.lr"] <= 1e-2
    assert read_best_params(tmp_path / "search" / BEST_PARAMS_FILE) == {"ewc": result.best_params}

    # The same trials with every test example corrupted score exactly the same: no test example reaches the objective.
    (blind,) = run_search(corrupt_test_splits(prepared), plan, tmp_path / "blind", train=recording("blind"))
    assert test_accs["search"] != test_accs["blind"]  # the corruption did change what the test split says
    trials = optuna.load_study(study_name="ewc", storage=f"sqlite:///{tmp_path / 'search' / 'search.db'}").trials
    blind_trials = optuna.load_study(study_name="ewc", storage=f"sqlite:///{tmp_path / 'blind' / 'search.db'}").trials
    assert [t.params for t in trials] == [t.params for t in blind_trials]
    assert [t.value for t in trials] == [t.value for t in blind_trials]
    assert [t.intermediate_values for t in trials] == [t.intermediate_values for t in blind_trials]

    # Resume: a trial left RUNNING by a kill is failed, finished trials are kept, only the missing ones run.
    study = open_study(tmp_path / "search", "ewc", plan)
    study.ask()  # a trial that never reports back, as after SIGKILL
    more = dataclasses.replace(plan, config=dataclasses.replace(plan.config, n_trials=3))
    (resumed,) = run_search(prepared, more, tmp_path / "search")
    states = [t.state for t in optuna.load_study(study_name="ewc", storage=f"sqlite:///{tmp_path / 'search' / 'search.db'}").trials]
    assert states.count(optuna.trial.TrialState.COMPLETE) == 3 and states.count(optuna.trial.TrialState.FAIL) == 1
    assert resumed.n_complete == 3


def test_trials_that_differ_only_in_strategy_values_share_task_1_and_score_as_unshared_trials(tmp_path, tiny_bert):
    """EWC trials over ewc_lambda alone train the same task 1: each forks it from one prefix under the search folder,
    with the trial values an unshared search gives (to 1e-6), and the prefix weights go once the search ends."""
    from cl_harness.runner.checkpoint import CHECKPOINT_FILE, STATE_FILE
    from cl_harness.runner.run import train_and_evaluate

    search = {"n_trials": 3, "pruner": "none", "spaces": {"ewc": {"ewc_lambda": {"low": 10, "high": 1e6, "log": True}}}}
    values, forked = {}, {"shared": [], "unshared": []}
    for mode in ("shared", "unshared"):
        folder = tmp_path / mode
        folder.mkdir()
        path = experiment_with_search(folder, tiny_bert, search)
        if mode == "unshared":
            data = yaml.safe_load(path.read_text())
            path.write_text(yaml.safe_dump({**data, "prefix_sharing": False}, sort_keys=False))
        prepared, plan = prepared_for(path)

        def recording(plan_, *args, into=forked[mode], **kwargs):
            result = train_and_evaluate(plan_, *args, **kwargs)
            into.append(result.metrics.get("train_time_saved_s", 0.0) > 0)
            return result

        run_search(prepared, plan, folder / "search", train=recording)
        trials = optuna.load_study(study_name="ewc", storage=f"sqlite:///{folder / 'search' / 'search.db'}").trials
        values[mode] = [(t.params, t.value) for t in trials]
    assert forked == {"shared": [True, True, True], "unshared": [False, False, False]}
    for (params, shared), (same_params, unshared) in zip(values["shared"], values["unshared"]):
        assert params == same_params and shared == pytest.approx(unshared, abs=1e-6)
    (prefix,) = (tmp_path / "shared" / "search" / "prefixes").iterdir()
    assert (prefix / STATE_FILE).is_file() and not (prefix / CHECKPOINT_FILE).exists()
    assert not (tmp_path / "unshared" / "search" / "prefixes").exists()


def scripted_search(folder, train, tasks: int, n_trials: int, pruner: str):
    """A search of naive over training.lr whose trials ``train`` scripts (no model): its StrategyResult."""
    import cl_harness.search.run as search_run

    spec = type("Spec", (), {"label": "naive", "plugins": []})()
    checked = type("Checked", (), {"tasks": list(range(tasks)), "strategies": [spec]})()
    prepared = type("Prepared", (), {"checked": checked, "run_plan": lambda self, planned: planned})()
    plan = SearchPlan(SearchConfig(spaces={}, n_trials=n_trials, pruner=pruner),
                      {"naive": {"training.lr": ParamSpace(low=1e-5, high=1e-3, log=True)}})
    original = search_run.apply_params
    search_run.apply_params = lambda s, params: (s, {})
    try:
        (result,) = run_search(prepared, plan, folder, train=train)
    finally:
        search_run.apply_params = original
    return result


def test_the_median_pruner_stops_trials_on_per_step_validation_accuracy(tmp_path):
    """The pruner sees only ``valid_acc/seen_avg``; a fake training reports good trials, then a bad one."""
    from cl_harness.runner.run import RunResult

    quality = iter([0.9, 0.8, 0.95, 0.1, 0.1])

    def train(plan, reporter, show_progress=False):
        q = next(quality)
        for step in (0, 1, 2, 3):
            reporter.log_step(step, {"valid_acc/seen_avg": q, "acc/seen_avg": 1.0 - q})
        return RunResult("naive", 0, ["a", "b", "c"], [0.5] * 3, status="FINISHED", metrics={"valid_acc": q})

    result = scripted_search(tmp_path, train, tasks=3, n_trials=5, pruner="median")
    assert result.n_complete == 3 and result.n_pruned == 2 and result.best_value == 0.95 and result.best_trial == 2


@pytest.mark.parametrize("error", [TypeError("unsupported operand"), KeyError("anchor"), ValueError("bad shape")])
def test_an_error_in_a_trials_code_fails_that_trial_only(tmp_path, error):
    # A TypeError or KeyError from a strategy's hook stopped the whole search with a traceback (a ValueError did not).
    from cl_harness.runner.run import RunResult

    outcomes = iter([0.6, error, 0.7])

    def train(plan, reporter, show_progress=False):
        outcome = next(outcomes)
        if isinstance(outcome, Exception):
            raise outcome
        return RunResult("naive", 0, ["a", "b"], [0.5] * 2, status="FINISHED", metrics={"valid_acc": outcome})

    result = scripted_search(tmp_path, train, tasks=2, n_trials=2, pruner="none")
    assert result.n_complete == 1 and result.best_value == 0.6
    states = [t.state for t in optuna.load_study(study_name="naive", storage=f"sqlite:///{tmp_path / 'search.db'}").trials]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL]


def test_the_reporter_forwards_to_a_logger_and_ignores_step_zero():
    logged = []
    inner = type("Logger", (), {"run_id": "r1", "log_step": lambda self, s, m: logged.append(s), "logged_steps": lambda self, k: {0}})()
    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    reporter = TrialReporter(trial, 0, inner)
    reporter.log_step(0, {"valid_acc/seen_avg": 0.5})
    reporter.log_step(1, {"valid_acc/seen_avg": 0.7, "acc/t1": 0.1})
    assert logged == [0, 1] and reporter.logged_steps("x") == {0} and trial.storage.get_trial(trial._trial_id).intermediate_values == {1: 0.7}
    assert torch is not None


def test_cli_search_only_then_final_runs_with_the_best_parameters_and_a_search_report(tmp_path, tiny_bert, capsys):
    from mlflow import MlflowClient

    search = {"n_trials": 2, "pruner": "median", "spaces": {"ewc": {"ewc_lambda": {"low": 10, "high": 1e4, "log": True}}}}
    path = experiment_with_search(tmp_path, tiny_bert, search)
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    assert main(["run", str(path), "--tracking-uri", uri, "--no-progress", "--search-only"]) == 0
    out = capsys.readouterr().out
    assert "search ewc: best valid_acc" in out and "best parameters:" in out
    ended = [line for line in out.splitlines() if line.startswith("search ewc: trial ")]  # a line as each trial ends
    assert [line.split(":")[1] for line in ended] == [" trial 0 (1 of 2)", " trial 1 (2 of 2)"] and "ewc_lambda=" in ended[0], out
    assert out.index(ended[-1]) < out.index("search ewc: best valid_acc")

    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.get_experiment_by_name("tiny").experiment_id
    runs = client.search_runs([experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("cl_harness.role") == "search"]
    trials = [r for r in runs if r.data.tags.get("cl_harness.role") == "trial"]
    assert len(trials) == 2 and all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in trials)
    assert sorted(r.data.tags["trial"] for r in trials) == ["0", "1"] and {r.data.tags["strategy"] for r in trials} == {"ewc"}
    assert "best_params.yaml" in {a.path for a in client.list_artifacts(parent.info.run_id)}
    best = float(parent.data.tags["best.ewc.ewc_lambda"])
    assert not [r for r in runs if r.data.tags.get("cl_harness.role") == "child"]  # --search-only: no final runs

    assert main(["run", str(path), "--tracking-uri", uri, "--no-progress", "--skip-search"]) == 0
    finals = [r for r in client.search_runs([experiment_id]) if r.data.tags.get("cl_harness.role") == "child"]
    (ewc_run,) = [r for r in finals if r.data.tags["strategy"] == "ewc"]
    logged = yaml.safe_load(open(client.download_artifacts(ewc_run.info.run_id, "config.yaml", str(tmp_path))).read())
    assert logged["strategies"][0]["plugins"][0]["ewc"]["ewc_lambda"] == pytest.approx(best)
    assert float(ewc_run.data.params["strategy.ewc.ewc_lambda"]) == pytest.approx(best)  # one param, as the UI sorts by it
    assert len(client.search_runs([experiment_id], "tags.`cl_harness.role` = 'trial'")) == 2  # no new trials

    assert main(["search-report", "tiny", "--tracking-uri", uri, "--out", str(tmp_path / "report")]) == 0
    report = capsys.readouterr().out
    assert "ewc: 2 finished" in report and "ewc/trial" in report
    assert (tmp_path / "report" / "optimization_history_ewc.png").is_file()


def test_the_final_runs_train_with_each_strategys_own_best_training_values(tmp_path, tiny_bert, monkeypatch, capsys):
    """naive's best lr (its only choice) is used by naive's final run; ewc, not searched, keeps the experiment's lr."""
    from mlflow import MlflowClient

    import cl_harness.grid.experiment as grid_experiment

    search = {"n_trials": 1, "pruner": "none", "spaces": {"naive": {"training.lr": {"choice": [0.0042]}}}}
    path = experiment_with_search(tmp_path, tiny_bert, search)
    trained_with = {}
    real_train = grid_experiment.train_and_evaluate

    def spy(plan, *args, **kwargs):
        trained_with[plan.strategy.label] = plan.training.lr
        return real_train(plan, *args, **kwargs)

    monkeypatch.setattr(grid_experiment, "train_and_evaluate", spy)
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    assert main(["run", str(path), "--tracking-uri", uri, "--no-progress"]) == 0
    assert "note:" not in capsys.readouterr().err
    assert trained_with == {"naive": 0.0042, "ewc": 1e-3}

    client = MlflowClient(tracking_uri=uri)
    experiment_id = client.get_experiment_by_name("tiny").experiment_id
    finals = {r.data.tags["strategy"]: r for r in client.search_runs([experiment_id], "tags.`cl_harness.role` = 'child'")}
    for label, lr in (("naive", 0.0042), ("ewc", 1e-3)):
        saved = yaml.safe_load(open(client.download_artifacts(finals[label].info.run_id, "config.yaml", str(tmp_path))).read())
        assert saved["training"]["lr"] == lr and float(finals[label].data.params["training.lr"]) == lr, label
    (parent,) = client.search_runs([experiment_id], "tags.`cl_harness.role` = 'parent'")
    saved = yaml.safe_load(open(client.download_artifacts(parent.info.run_id, "config.yaml", str(tmp_path / "p"))).read())
    assert [s.get("training") for s in saved["strategies"]] == [{"lr": 0.0042}, None]

    # A worker process (--workers N, Ray) loads the experiment itself and trains the runs the parent tuned.
    from cl_harness.grid.experiment import RunSpec, grid_folder
    from cl_harness.grid.worker import prepare_in_worker
    from cl_harness.search.run import search_folder
    from cl_harness.search.tracked import apply_best

    prepared, _ = prepared_for(path)
    tuned = apply_best(prepared, read_best_params(search_folder(prepared) / BEST_PARAMS_FILE))
    spec = RunSpec(str(path), (), None, uri, experiment_id, parent.info.run_id, {}, str(grid_folder(tuned)), tuple(tuned.runs))
    in_worker = prepare_in_worker(pickle.loads(pickle.dumps(spec)))
    assert [in_worker.run_plan(r).training.lr for r in in_worker.runs] == [0.0042, 1e-3]
