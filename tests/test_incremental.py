"""Incremental comparisons: a run is found again by its own settings, so adding a strategy to a finished grid trains only
its runs and the parent's comparison holds old and new; strategy parameters are one MLflow param each; the results
come back to Python through cl_harness.results; names that land on disk never collide."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import pytest
from conftest import write_demo_stream, write_experiment

from cl_harness import results
from cl_harness.cli import main
from cl_harness.config.names import file_name, first_collision
from cl_harness.config.yaml_io import Source
from cl_harness.errors import ConfigError
from cl_harness.report.compare import load_comparison
from cl_harness.strategies import default_registry
from cl_harness.tracking.store_guard import StoreUnavailableError


@dataclass
class Stage:
    out: str
    err: str
    results: results.Results | None = None


@pytest.fixture(scope="module")
def grown(tmp_path_factory, tiny_bert):
    """One experiment grown step by step: [naive, replay]; then ewc added; then ewc's lambda changed; dry runs between."""
    tmp = tmp_path_factory.mktemp("incremental")
    write_demo_stream(tmp, per_class=8, tasks=2)
    path = write_experiment(tmp, tiny_bert, ["naive", "replay"], name="grow")
    uri = f"sqlite:///{tmp}/store/mlflow.db"
    stages = {}

    def step(name: str, *extra: str, read: bool = True) -> None:
        import contextlib
        import io

        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(["run", str(path), "--tracking-uri", uri, "--no-progress", *extra])
        assert code == 0, err.getvalue()
        stages[name] = Stage(out.getvalue(), err.getvalue(), results.load("grow", uri) if read else None)

    step("first")
    step("added", "--set", "strategies=[naive, replay, ewc]")
    step("dry", "--set", "strategies=[naive, replay, ewc]", "--set", "seeds=[0, 1]", "--dry-run", read=False)
    step("changed", "--set", "strategies=[naive, replay, {ewc: {ewc_lambda: 5}}]")
    step("new", "--set", "training.lr=0.002", "--dry-run", read=False)
    return stages, uri


def test_adding_a_strategy_trains_only_its_runs_and_the_parent_compares_all(grown):
    stages, uri = grown
    added = stages["added"]
    assert "naive/seed0/order0: FINISHED" in added.out and added.out.count("already finished") == 2
    assert "== ewc/seed0/order0: FINISHED" in added.out and "forked" not in added.out.split("== ewc/")[1].split("\n")[0]
    first, later = stages["first"].results, added.results
    assert later.parent_run_id == first.parent_run_id  # the same comparison, its parent reopened
    assert set(later.comparison()["strategy"]) == {"naive", "replay", "ewc"}
    assert set(later.runs.loc[later.runs.strategy != "ewc", "run_id"]) == set(first.runs["run_id"])  # not trained again
    for line in ("naive ", "replay ", "ewc "):
        assert any(row.startswith(line) for row in added.out.splitlines()), added.out  # the closing table holds all three

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    parent = client.get_run(later.parent_run_id)
    assert {"summary/acc/naive", "summary/acc/replay", "summary/acc/ewc"} <= set(parent.data.metrics)
    assert "ewc" in parent.data.tags["mlflow.note.content"]


def test_dry_run_says_which_runs_are_done(grown):
    stages, _ = grown
    out = stages["dry"].out
    assert "6 planned runs of experiment 'grow', 3 already done" in out
    assert "  done      ewc/seed0/order0" in out and "  to train  ewc/seed1/order0" in out


def test_a_strategy_changed_under_its_label_is_a_new_run_and_replaces_the_old_one_in_the_comparison(grown):
    stages, uri = grown
    changed = stages["changed"].results
    assert stages["changed"].out.count("already finished") == 2
    ewc = changed.runs[changed.runs.strategy == "ewc"]
    assert len(ewc) == 1 and ewc["strategy.ewc.ewc_lambda"].item() == 5.0
    assert ewc["run_id"].item() not in set(stages["added"].results.runs["run_id"])
    assert changed.comparison().set_index("strategy").loc["ewc", "n_runs"] == 1


def test_a_changed_shared_setting_is_said_to_start_a_new_comparison(grown):
    stages, _ = grown
    new = stages["new"]
    assert "this is a new comparison" in new.err and "training.lr: 0.001 -> 0.002" in new.err
    assert ", 0 already done" in new.out
    assert "new comparison" not in stages["added"].err


def test_strategy_parameters_are_one_mlflow_param_each(grown):
    stages, uri = grown
    runs = stages["added"].results.runs.set_index("strategy")
    assert runs.loc["ewc", "strategy.ewc.ewc_lambda"] == 1000.0 and runs.loc["ewc", "strategy.ewc.mode"] == "separate"
    assert runs.loc["replay", "strategy.replay.mem_size"] > 0
    assert pd.isna(runs.loc["naive", "strategy.ewc.ewc_lambda"])  # a run holds its own strategy's parameters only
    assert not [c for c in runs.columns if c in ("strategies", "run.strategy.plugins")]


def test_results_give_runs_matrices_and_the_comparison_table(grown):
    stages, uri = grown
    res = stages["added"].results
    assert len(res.runs) == 3 and set(res.runs["status"]) == {"FINISHED"}
    assert {"run", "run_id", "strategy", "seed", "order", "acc", "forgetting", "acc/t1", "training.lr"} <= set(res.runs.columns)
    assert res.runs["training.lr"].tolist() == [0.001] * 3
    run_id = res.runs.set_index("strategy").loc["ewc", "run_id"]
    matrix = res.accuracy_matrix(run_id)
    assert matrix.values.shape == (2, 2) and matrix.tasks == ["t1", "t2"] and matrix.initial.shape == (2,)
    assert ((matrix.values >= 0) & (matrix.values <= 1)).all()
    assert res.runs.set_index("run_id").loc[run_id, "acc"] == pytest.approx(matrix.values[-1].mean())
    with pytest.raises(KeyError, match="runs with one"):
        res.accuracy_matrix("no-such-run")

    from mlflow import MlflowClient

    table = load_comparison(MlflowClient(tracking_uri=uri), "grow").table()  # the store as the last stage left it
    pd.testing.assert_frame_equal(stages["changed"].results.comparison(), table)


def test_compare_prints_the_table_of_the_results_api(grown, tmp_path, capsys):
    stages, uri = grown
    assert main(["compare", "grow", "--tracking-uri", uri, "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out  # the table `run` printed at its end
    assert out.startswith("strategy  runs") and "* p < 0.05, Holm-corrected" in out and "report: " in out and "|" not in out
    assert main(["compare", "grow", "--tracking-uri", uri, "--out", str(tmp_path / "report"), "--markdown"]) == 0
    out = capsys.readouterr().out
    assert out.count("| ewc |") == 1 and "| naive |" in out and "| replay |" in out


def test_reading_results_never_creates_a_store(tmp_path):
    missing = tmp_path / "nothing" / "mlflow.db"
    with pytest.raises(StoreUnavailableError):
        results.load("grow", f"sqlite:///{missing}")
    assert not missing.parent.exists()


# --- names that land on disk ---------------------------------------------------------------------------------------


def test_one_function_turns_a_name_into_a_file_name():
    assert file_name("ewc+replay") == "ewc+replay"
    assert file_name("../up") == "___up" and file_name("a/b") == "a_b" and file_name("") == "_"
    assert len(file_name("x" * 300)) < 130 and file_name("x" * 300) != file_name("x" * 299)
    assert first_collision(["naive", "my run", "ewc", "My_run"]) == (1, 3)
    assert first_collision(["naive", "ewc"]) is None


def test_folders_named_after_an_experiment_use_that_function(tmp_path):
    from types import SimpleNamespace

    from cl_harness.grid.experiment import comparison_folder
    from cl_harness.tracking.store import default_artifact_location

    assert default_artifact_location(f"sqlite:///{tmp_path}/mlflow.db", "../my study").endswith("/artifacts/___my_study")
    config = SimpleNamespace(checkpoint_dir=str(tmp_path / "runs"), name="../my study", tracking=SimpleNamespace(experiment=None))
    loaded = SimpleNamespace(resolved=lambda: {"stream": {}, "backbone": {}, "training": {}})
    assert comparison_folder(SimpleNamespace(config=config, loaded=loaded)).parent == tmp_path / "runs" / "___my_study"


@pytest.mark.parametrize("labels", [("my run", "my_run"), ("a/b", "a_b"), ("EWC", "ewc")])
def test_two_strategy_labels_that_share_a_file_name_are_refused_naming_both(labels):
    entries = ["naive", *({"name": label, "plugins": ["naive"]} for label in labels)]
    with pytest.raises(ConfigError) as info:
        default_registry(installed=False).parse_strategies(entries, "class_incremental", Source("exp.yaml", {("strategies", 2): 4}))
    assert f"strategy labels {labels[0]!r} and {labels[1]!r} both become the file name" in info.value.message
    assert info.value.line == 4
