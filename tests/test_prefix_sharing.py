"""Prefix sharing: runs that fork task 1 from their grid's shared prefix end exactly as runs that train task 1 themselves."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from conftest import write_experiment

from cl_harness.cli import main
from cl_harness.config.loader import load_experiment
from cl_harness.data.demo import DEMO_LABELS
from cl_harness.evaluation.evaluator import Evaluator
from cl_harness.grid.experiment import grid_folder, run_experiment
from cl_harness.grid.plan import prefix_units
from cl_harness.grid.prefix import ensure_prefix, prefix_folder, prefix_ready
from cl_harness.grid.prepare import check_experiment, prepare_experiment
from cl_harness.runner.hooks import strength_hint
from cl_harness.runner.checkpoint import CHECKPOINT_FILE, STATE_FILE
from cl_harness.runner.prefix import SharedPrefix
from cl_harness.runner.run import train_and_evaluate
from cl_harness.strategies import default_registry
from cl_harness.tracking import schema

CLASS_INCREMENTAL = [
    "naive", "ewc", "mas", "lwf", {"replay": {"mem_size": 10}}, {"agem": {"patterns_per_experience": 8, "sample_size": 8}},
    {"gem": {"patterns_per_experience": 8}}, {"mir": {"mem_size": 10, "subsample": 8}}, "cumulative", {"name": "replay+ewc", "plugins": [{"replay": {"mem_size": 10}}, "ewc"]},
]
DOMAIN_INCREMENTAL = ["naive", "lfl"]  # lfl supports domain-incremental streams only


def stream_file(directory: Path, scenario: str) -> None:
    """3 small demo tasks with validation splits."""
    tasks = [
        {
            "name": f"t{i + 1}",
            "source": {"type": "demo", "seed": i, "train_examples_per_class": 10, "test_examples_per_class": 4},
            "classes": DEMO_LABELS[:2] if scenario == "domain_incremental" else DEMO_LABELS[2 * i : 2 * i + 2],
            "valid_per_class": 2,
        }
        for i in range(3)
    ]
    (directory / "stream.yaml").write_text(yaml.safe_dump({"name": "tiny-demo", "scenario": scenario, "tasks": tasks}, sort_keys=False))


def experiment(directory: Path, tiny_bert: Path, name: str, strategies: list, scenario: str, **config) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    stream_file(directory, scenario)
    path = write_experiment(directory, tiny_bert, strategies, name=name)
    data = {**yaml.safe_load(path.read_text()), **config}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def prepared_of(path: Path):
    return prepare_experiment(check_experiment(load_experiment(path)))


@pytest.fixture(scope="module")
def grids(tmp_path_factory, tiny_bert):
    """Per scenario: a grid killed after its prefix was saved, then resumed (tracked), and every run of it trained unshared.

    ``{scenario: (prepared, shared results, unshared results, prefix state.json before the resume, the (split, step)
    scorings the resumed grid ran)}``
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread beats two busy ones
    root = tmp_path_factory.mktemp("prefix")
    out = {}
    for scenario, strategies in (("class_incremental", CLASS_INCREMENTAL), ("domain_incremental", DOMAIN_INCREMENTAL)):
        prepared = prepared_of(experiment(root / scenario, tiny_bert, scenario, strategies, scenario))
        (unit,) = prefix_units(prepared.runs)
        grid = grid_folder(prepared)
        ensure_prefix(prepared, unit, grid, False)  # the grid was killed after its prefix was saved
        saved = (prefix_folder(grid, unit) / STATE_FILE).read_text()
        scored, original = [], Evaluator.__call__

        def counted(self, model, step, scored=scored, original=original):
            scored.append((self.split, step))
            return original(self, model, step)

        Evaluator.__call__ = counted  # which (split, step) the shared grid's runs scored themselves
        try:
            shared = run_experiment(prepared, f"sqlite:///{root}/mlflow.db", show_progress=False)
        finally:
            Evaluator.__call__ = original
        unshared = [train_and_evaluate(prepared.run_plan(planned), None, False) for planned in prepared.runs]
        out[scenario] = (prepared, shared, unshared, saved, scored)
    torch.set_num_threads(threads)
    return root, out


def assert_same_run(got, want) -> None:
    name = got.run_name
    assert got.status == want.status == "FINISHED", name
    assert got.initial == want.initial, name
    for rows, wanted in ((got.matrix, want.matrix), (got.valid_matrix, want.valid_matrix)):
        assert len(rows) == len(wanted) == 3, name
        for row, expected in zip(rows, wanted):
            assert row == pytest.approx(expected, abs=1e-6), name
    for metric in (*schema.FINAL_METRICS, schema.NFR_METRIC, schema.VALID_ACC_METRIC):
        if metric in want.metrics and not math.isnan(want.metrics[metric]):
            assert got.metrics[metric] == pytest.approx(want.metrics[metric], abs=1e-6), (name, metric)


def test_every_strategy_that_claims_the_naive_prefix_is_tested_here(grids):
    claimed = {info.name for info in default_registry(installed=False) if info.naive_prefix_tasks}
    tested = {plugin.name for prepared, *_ in grids[1].values() for planned in prepared.runs for plugin in planned.strategy.plugins}
    assert claimed <= tested, f"add {sorted(claimed - tested)} to this test"


@pytest.mark.parametrize("scenario", ["class_incremental", "domain_incremental"])
def test_a_resumed_grid_forks_its_saved_prefix_into_the_unshared_matrices_validation_and_nfr(grids, scenario):
    from mlflow import MlflowClient

    root, out = grids
    prepared, shared, unshared, saved, _ = out[scenario]
    assert all(p.prefix is not None for p in prepared.runs)  # every strategy here shares task 1
    grid = grid_folder(prepared)
    folder = prefix_folder(grid, prepared.runs[0].prefix)
    assert (folder / STATE_FILE).read_text() == saved  # reused, not trained again
    assert not (folder / CHECKPOINT_FILE).exists(), "a prefix whose runs all finished keeps no weights"
    for got, want in zip(shared, unshared, strict=True):
        assert_same_run(got, want)
        assert got.note.startswith("task 1 forked from the shared prefix")
        assert got.metrics[schema.TRAIN_TIME_SAVED_METRIC] > 0 and schema.TRAIN_TIME_SAVED_METRIC not in want.metrics
    client = MlflowClient(tracking_uri=f"sqlite:///{root}/mlflow.db")
    child = client.get_run(shared[0].run_id)
    assert child.data.tags[schema.SHARED_PREFIX_TASKS_TAG] == "1"
    assert child.data.metrics[schema.TRAIN_TIME_SAVED_METRIC] == shared[0].metrics[schema.TRAIN_TIME_SAVED_METRIC]
    first = schema.penalty_share_metric(prepared.run_plan(prepared.runs[0]).task_names[0])
    for planned, result in zip(prepared.runs, shared, strict=True):
        # task 1's share of the strategy's terms (none: naive's epochs), logged by a fork where an unshared run logs it
        metrics = client.get_run(result.run_id).data.metrics
        assert metrics.get(first) == (0.0 if strength_hint(planned.strategy) else None), result.run_name
    parent = client.get_run(child.data.tags[schema.PARENT_RUN_TAG])
    seconds = shared[0].metrics[schema.TRAIN_TIME_SAVED_METRIC]  # one prefix: each run saved its training time
    assert parent.data.tags[schema.SHARED_PREFIX_TASKS_TAG] == "1"
    assert parent.data.metrics[schema.TRAIN_TIME_SAVED_METRIC] == pytest.approx((len(shared) - 1) * seconds)


@pytest.mark.parametrize("scenario", ["class_incremental", "domain_incremental"])
def test_forks_take_their_task_1_scores_from_the_prefix_which_scored_it_once(grids, scenario):
    """No strategy here changes the weights in its task-1 hooks, so no fork scores step 1 itself (the prefix did, with
    the same model); the matrices still equal the unshared runs' (the test above)."""
    prepared, _, _, saved, scored = grids[1][scenario]
    assert yaml.safe_load(saved)["matrix"], "the prefix scored task 1"
    assert ("test", 1) not in scored and ("valid", 1) not in scored
    assert scored.count(("test", 2)) == scored.count(("valid", 2)) == len(prepared.runs)


def test_a_fork_whose_hooks_change_the_weights_scores_task_1_itself(tmp_path, tiny_bert, monkeypatch):
    """The prefix's step-1 scores hold for its own weights only: a fork whose weights differ after its hooks (here the
    fork is nudged after loading) scores step 1 itself, and gets other scores than the prefix's."""
    import torch

    import cl_harness.runner.run as run_module

    prepared = prepared_of(experiment(tmp_path, tiny_bert, "nudged", ["naive", "ewc"], "domain_incremental"))
    planned = prepared.runs[1]
    shared = ensure_prefix(prepared, planned.prefix, grid_folder(prepared), False)
    real_fork = run_module.fork_prefix

    def nudged_fork(payload, strategy, *args):
        real_fork(payload, strategy, *args)
        with torch.no_grad():
            strategy.model.heads[0].bias.add_(5.0 * torch.arange(strategy.model.heads[0].bias.numel()))

    monkeypatch.setattr(run_module, "fork_prefix", nudged_fork)
    scored, original = [], Evaluator.__call__
    monkeypatch.setattr(Evaluator, "__call__", lambda self, model, step: (scored.append((self.split, step)), original(self, model, step))[1])
    plan = prepared.run_plan(planned)
    plan.prefix = shared
    result = train_and_evaluate(plan, None, False)
    assert ("test", 1) in scored and ("valid", 1) in scored
    prefix_row = yaml.safe_load((shared.folder / STATE_FILE).read_text())["matrix"][0]
    assert result.matrix[0] != prefix_row


def test_a_prefix_is_reused_while_its_checkpoint_verifies_and_trained_again_once_damaged(tmp_path, tiny_bert):
    prepared = prepared_of(experiment(tmp_path, tiny_bert, "damaged", ["ewc", "lwf"], "class_incremental"))
    unit, grid = prepared.runs[0].prefix, grid_folder(prepared)
    folder = prefix_folder(grid, unit)
    assert ensure_prefix(prepared, unit, grid, False) == SharedPrefix(folder)
    first = (folder / STATE_FILE).read_text()
    ensure_prefix(prepared, unit, grid, False)
    assert (folder / STATE_FILE).read_text() == first
    data = bytearray((folder / CHECKPOINT_FILE).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (folder / CHECKPOINT_FILE).write_bytes(bytes(data))
    assert not prefix_ready(folder)
    assert ensure_prefix(prepared, unit, grid, False) == SharedPrefix(folder)
    assert (folder / STATE_FILE).read_text() != first and prefix_ready(folder)


def test_a_reused_prefix_is_read_and_checked_once_and_its_fork_does_not_read_it_again(tmp_path, tiny_bert, monkeypatch):
    """ensure_prefix hands the checkpoint it verified to the run; the run forks it without loading the file again,
    and lets the plan's reference go (the memory is freed once task 1 is forked)."""
    import cl_harness.runner.checkpoint as checkpoint_module
    import cl_harness.runner.run as run_module

    prepared = prepared_of(experiment(tmp_path, tiny_bert, "read-once", ["naive", "ewc"], "class_incremental"))
    planned = prepared.runs[1]
    grid = grid_folder(prepared)
    trained = ensure_prefix(prepared, planned.prefix, grid, False)
    assert trained.saved is None  # just trained in this process: not read back here
    reads, real_read = [], checkpoint_module._try_load
    monkeypatch.setattr(checkpoint_module, "_try_load", lambda path: (reads.append(path), real_read(path))[1])
    shared = ensure_prefix(prepared, planned.prefix, grid, False)
    assert reads == [prefix_folder(grid, planned.prefix) / CHECKPOINT_FILE] and shared.saved["step"] == 1
    monkeypatch.setattr(run_module, "load_checkpoint", lambda folder: pytest.fail(f"{folder} read again"))
    plan = prepared.run_plan(planned)
    plan.prefix = shared
    result = train_and_evaluate(plan, None, False)
    assert result.status == schema.FINISHED and result.metrics[schema.TRAIN_TIME_SAVED_METRIC] > 0
    assert plan.prefix.saved is None


def test_dry_run_shows_the_prefix_units_and_the_runs_that_fork_them(tmp_path, tiny_bert, capsys):
    path = experiment(tmp_path, tiny_bert, "dry", ["ewc", "lwf", "si", {"name": "mine", "plugins": ["ewc", "cl_test_plugins:LoaderSpy"]}],
                      "class_incremental", seeds=[0, 1])
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "ewc/seed1/order0" in out and "ewc/seed1/order0                         order: t1 -> t2 -> t3  (task 1 from prefix/seed1/order0)" in out
    assert "  prefix/seed0/order0                      for ewc/seed0/order0, lwf/seed0/order0" in out
    assert "si/seed0/order0                          order: t1 -> t2 -> t3\n" in out  # records its trajectory during task 1
    assert "mine/seed0/order0                        order: t1 -> t2 -> t3\n" in out  # a user's plugin: unknown hooks
    assert main(["run", str(path), "--dry-run", "--no-prefix-sharing"]) == 0
    out = capsys.readouterr().out
    assert "task 1 from" not in out and "shared prefixes" not in out


def test_runs_share_a_prefix_only_with_runs_of_the_same_training_values():
    """A search's per-strategy training values (e.g. its best lr) split the prefix groups: task 1 depends on them."""
    from cl_harness.config.yaml_io import Source
    from cl_harness.grid.plan import plan_runs

    specs = default_registry().parse_strategies(["naive", "ewc", "lwf", "replay"], "class_incremental", Source())
    training = {"naive": {"lr": 1e-4}, "ewc": {"lr": 1e-4}, "lwf": {"lr": 3e-4}}  # replay: the experiment's lr
    runs = plan_runs(specs, [0], [(0, 1)], training, share_prefix=True)
    by_label = {planned.strategy.label: planned for planned in runs}
    assert by_label["naive"].prefix == by_label["ewc"].prefix is not None
    assert by_label["naive"].prefix.training == (("lr", 1e-4),) and "lr=0.0001" in by_label["naive"].prefix.name
    assert by_label["lwf"].prefix is None and by_label["replay"].prefix is None  # alone with their training values
    assert len(prefix_units(runs)) == 1
