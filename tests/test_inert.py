"""Inert strategies: the share of a strategy's own terms in the training loss, the inert verdict, and where both show."""

from __future__ import annotations

import contextlib
import io

import pytest
from avalanche.training.plugins import SupervisedPlugin
from conftest import write_demo_stream, write_experiment

from cl_harness.cli import main
from cl_harness.report.compare import Comparison
from cl_harness.report.glance import compact_table
from cl_harness.runner.hooks import AddedLossShare
from cl_harness.tracking import schema
from cl_harness.tracking.reader import ChildRun

ADD_LOSS = f"{__name__}:AddLoss"


class AddLoss(SupervisedPlugin):
    """Adds ``factor`` times the criterion from the second task on: its share of the loss is factor / (1 + factor)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def before_backward(self, strategy, **kwargs):
        if strategy.clock.train_exp_counter >= 1:
            strategy.loss = strategy.loss + self.factor * strategy.criterion()


def meter_of(strategy) -> AddedLossShare:
    return next(p for p in strategy.plugins if isinstance(p, AddedLossShare))


@pytest.mark.parametrize("factor", [0.25, 1e-5])
def test_the_share_of_added_terms_per_task(tiny_run, factor):
    result, strategy = tiny_run({"name": "scaled", "plugins": [{ADD_LOSS: {"factor": factor}}]}, tasks=3)
    meter = meter_of(strategy)
    assert result.status == "FINISHED" and meter.shares[0] == 0.0
    # float32 losses: the terms are read to about 1e-7 of the loss
    assert [meter.shares[1], meter.shares[2]] == pytest.approx([factor / (1 + factor)] * 2, rel=1e-4, abs=1e-7)
    verdict = meter.inert()
    assert (verdict is None) == (factor > 1e-3)  # a user's plugin names no strength: the verdict says what it saw
    if verdict:
        assert "scaled's loss terms stayed below 0.001 of the training loss" in verdict and "at most 1.0e-05" in verdict


def test_a_strategy_without_terms_gets_no_verdict(tiny_run):
    _, strategy = tiny_run("naive")
    meter = meter_of(strategy)
    assert set(meter.shares.values()) == {0.0} and meter.inert() is None and meter.hint is None


def test_ewc_too_weak_to_act_is_inert_and_names_the_parameter_to_raise(tiny_run):
    _, strategy = tiny_run({"ewc": {"ewc_lambda": 1e-2}}, tasks=3)
    meter = meter_of(strategy)
    share = max(meter.shares[1], meter.shares[2])
    assert 0 < share < 1e-3
    verdict = meter.inert()
    assert "raise ewc's ewc_lambda (now 0.01; on MiniLM 1e3 did nothing, 1e6 acted weakly, 1e9 strongly" in verdict
    # terms linear in lambda: share a at lambda' = lambda * a / (1 - a) * (1 - s) / s
    assert f"from about {1e-2 * 0.01 / 0.99 * (1 - share) / share:.0e} on" in verdict
    _, strong = tiny_run({"ewc": {"ewc_lambda": 1e6}}, tasks=3)
    assert meter_of(strong).shares[2] > 1e-3 and meter_of(strong).inert() is None


def test_terms_lost_in_the_losss_rounding_are_inert_and_say_so(tiny_run):
    _, strategy = tiny_run({"ewc": {"ewc_lambda": 1e-12}}, tasks=3)
    meter = meter_of(strategy)
    assert meter.shares[1] == meter.shares[2] == 0.0  # float32: 1e-12 times the penalty does not change the loss
    verdict = meter.inert()
    assert "(at most 0.0e+00: lost in rounding)" in verdict and "raise ewc's ewc_lambda (now 1e-12" in verdict
    assert "below the loss's float32 resolution, so by orders of magnitude" in verdict


def child(name: str, seed: int, matrix: list[list[float]], **fields) -> ChildRun:
    return ChildRun(f"id-{name}-{seed}", f"{name}/seed{seed}/order0", "FINISHED", name, seed, 0, {"acc": matrix[-1][0]},
                    ["t1", "t2"], [0.0, 0.0], matrix, **fields)


def test_the_table_flags_strategies_that_train_as_naive_does():
    naive = [[0.9, 0.0], [0.1, 0.8]]
    runs = [child("naive", 0, naive), child("naive", 1, naive), child("ewc", 0, naive), child("ewc", 1, [[0.9, 0.0], [0.2, 0.8]]),
            child("si", 0, [[0.9, 0.0], [0.3, 0.7]], inert="si's loss terms stayed below 0.001 ...; raise si's si_lambda"),
            child("lwf", 0, [[0.9, 0.0], [0.5, 0.6]], strength_hint="raise lwf's alpha"),
            child("der", 0, naive, strength_hint="raise der's alpha")]  # its terms acted: training changed, predictions not
    runs[-1].metrics["penalty_share"] = 0.061
    runs[2].strength_hint = "raise ewc's ewc_lambda (now 1000)"
    comparison = Comparison("e", "1", "p", "parent", "FINISHED", None, "sqlite://", runs)
    assert [r.run_id for r in comparison.equal_to_naive()] == ["id-ewc-0", "id-der-0"]
    table = comparison.table().set_index("strategy")
    assert table.loc["ewc", "inert"] == ("ewc's accuracy matrix equals naive's at the same seed and order in 1 of 2 runs; "
                                         "raise ewc's ewc_lambda (now 1000)")
    assert table.loc["si", "inert"] == "in 1 of 1 runs, si's loss terms stayed below 0.001 ...; raise si's si_lambda"
    assert table.loc["lwf", "inert"] == "" and table.loc["naive", "inert"] == "" and table.loc["der", "inert"] == ""
    lines = compact_table(comparison.table()).splitlines()
    assert {line.removeprefix("inert: ") for line in lines if line.startswith("inert: ")} == {table.loc["ewc", "inert"], table.loc["si", "inert"]}


def test_a_grid_says_which_strategy_was_inert(tmp_path, tiny_bert):
    from mlflow import MlflowClient

    write_demo_stream(tmp_path, "class_incremental", per_class=8, tasks=2)
    experiment = write_experiment(tmp_path, tiny_bert, ["naive", {"ewc": {"ewc_lambda": 0.0}}, {"der": {"mem_size": 8}}])
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        assert main(["run", str(experiment), "--tracking-uri", uri, "--no-progress"]) == 0
    assert "warning: ewc's loss terms stayed below 0.001 of the training loss" in err.getvalue()
    assert "\ninert: ewc's accuracy matrix equals naive's at the same seed and order in 1 of 1 runs; in 1 of 1 runs, ewc's loss terms" in out.getvalue()
    client = MlflowClient(tracking_uri=uri)
    runs = {r.data.tags.get(schema.STRATEGY_TAG): r for r in client.search_runs([client.get_experiment_by_name("tiny").experiment_id])}
    ewc, der, naive = runs["ewc"].data, runs["der"].data, runs["naive"].data
    assert "raise ewc's ewc_lambda (now 0" in ewc.tags[schema.INERT_TAG] and schema.EQUALS_NAIVE_TAG in ewc.tags
    assert ewc.metrics[schema.penalty_share_metric("t2")] == 0.0 and ewc.metrics[schema.PENALTY_SHARE_METRIC] == 0.0
    assert der.metrics[schema.PENALTY_SHARE_METRIC] > 1e-3 and schema.INERT_TAG not in der.tags
    assert schema.STRENGTH_HINT_TAG not in der.tags  # its terms acted: nothing to raise (it said "raise" on every run)
    assert ewc.tags[schema.STRENGTH_HINT_TAG].startswith("raise ewc's ewc_lambda (now 0")
    assert not any(key.startswith(schema.PENALTY_SHARE_PREFIX) for key in naive.metrics)
