"""The comparison report on a real sqlite MLflow store filled by hand (no training): table, plots, HTML, logging."""

from __future__ import annotations

import json
import math
import re
import time

import numpy as np
import pytest

from cl_harness.errors import ConfigError
from cl_harness.evaluation.metrics import summary
from cl_harness.report.compare import load_comparison, markdown, write_csv
from cl_harness.report.html import log_report, write_report
from cl_harness.report.plots import final_acc_figure, forgetting_curves_figure, heatmap_figure, png_bytes
from cl_harness.tracking.schema import accuracy_matrix_dict
from cl_harness.tracking.store import default_artifact_location, get_or_create_experiment
from cl_harness.tracking.writer import RunLogger
from cl_harness.tracking import schema

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
INITIAL = [0.5, 0.5]
# (strategy, seed, matrix, wall_time_s): final accuracies 0.8/0.6 for replay, 0.5/0.4 for naive
RUNS = [
    ("replay", 0, [[0.9, 0.5], [0.8, 0.8]], 10.0),
    ("replay", 1, [[0.9, 0.4], [0.5, 0.7]], 20.0),
    ("naive", 0, [[1.0, 0.5], [0.2, 0.8]], 5.0),
    ("naive", 1, [[1.0, 0.5], [0.0, 0.8]], 7.0),
]


def add_child(client, experiment_id, parent_id, strategy, seed, matrix, tasks=("t1", "t2"), order=0,
              extra=None, status="FINISHED", metrics=None):
    """A child run as the runner logs it: tags, final and per-step metrics, accuracy_matrix.json."""
    tags = {schema.ROLE_TAG: "child", "strategy": strategy, "seed": str(seed), "order": str(order),
            "stream": "hand", "scenario": "class_incremental", "backbone": "none"}
    logger = RunLogger(client, experiment_id, f"{strategy}/seed{seed}/order{order}", tags=tags, parent_run_id=parent_id)
    for step, row in enumerate([INITIAL, *matrix]):
        logger.log_step(step, {f"acc/{t}": v for t, v in zip(tasks, row)})
    final = metrics if metrics is not None else summary(matrix, INITIAL) if len(matrix) == len(tasks) else {}
    logger.log_final({**final, **(extra or {})})
    logger.log_dict(accuracy_matrix_dict(list(tasks), INITIAL, matrix), schema.MATRIX_ARTIFACT)
    if status == "FAILED":
        logger.set_tags({"error": "non-finite loss at step 2"})
    logger.end(status)
    return logger.run_id


def add_parent(client, experiment_id, name):
    parent = RunLogger(client, experiment_id, name, tags={schema.ROLE_TAG: "parent", "stream": "hand", "scenario": "class_incremental"})
    return parent


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """A sqlite store with experiment ``cl-test`` (2 strategies x 2 seeds + 1 failed) and ``orders``."""
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = get_or_create_experiment(client, "cl-test", default_artifact_location(uri, "cl-test"))
    parent = add_parent(client, exp, "cl-test")
    for strategy, seed, matrix, wall in RUNS:
        extra = {"wall_time_s": wall, "train_examples_per_s": 100.0 * (seed + 1), "trainable_params": 1000.0}
        add_child(client, exp, parent.run_id, strategy, seed, matrix, extra=extra)
    failed = add_child(client, exp, parent.run_id, "naive", 2, [[0.9, 0.5]], status="FAILED")
    parent.end("FAILED")

    orders = get_or_create_experiment(client, "orders", default_artifact_location(uri, "orders"))
    old = add_parent(client, orders, "orders")
    add_child(client, orders, old.run_id, "naive", 0, [[1.0, 0.0], [0.0, 1.0]])
    old.end()
    time.sleep(0.05)
    new = add_parent(client, orders, "orders")
    add_child(client, orders, new.run_id, "naive", 0, [[0.9, 0.5], [0.5, 0.9]], tasks=("a", "b"), order=0)
    add_child(client, orders, new.run_id, "naive", 0, [[0.7, 0.5], [0.3, 0.9]], tasks=("b", "a"), order=1)
    add_child(client, orders, new.run_id, "joint", 0, [[0.8, 0.6]], metrics={"acc": 0.7})
    new.end()

    empty = add_parent(client, get_or_create_experiment(client, "empty", default_artifact_location(uri, "empty")), "empty")
    add_child(client, client.get_run(empty.run_id).info.experiment_id, empty.run_id, "naive", 0,
              [[0.9, 0.5]], status="FAILED")
    return {"client": client, "parent": parent.run_id, "failed": failed, "old": old.run_id, "new": new.run_id}


@pytest.fixture(scope="module")
def comparison(store):
    return load_comparison(store["client"], "cl-test")


def test_table_means_and_stds_match_hand_computed_numbers(comparison):
    table = comparison.table().set_index("strategy")
    replay, naive = table.loc["replay"], table.loc["naive"]
    assert replay["acc_mean"] == pytest.approx(0.7) and replay["acc_std"] == pytest.approx(math.sqrt(0.02))
    assert naive["acc_mean"] == pytest.approx(0.45) and naive["acc_std"] == pytest.approx(math.sqrt(0.005))
    # bwt: replay (0.8-0.9, 0.5-0.9), naive (0.2-1.0, 0.0-1.0)
    assert replay["bwt_mean"] == pytest.approx(-0.25) and replay["bwt_std"] == pytest.approx(math.sqrt(0.045))
    assert naive["bwt_mean"] == pytest.approx(-0.9) and naive["bwt_std"] == pytest.approx(math.sqrt(0.02))
    assert replay["fwt_mean"] == pytest.approx(-0.05) and replay["forgetting_mean"] == pytest.approx(0.25)
    assert replay["learning_acc_mean"] == pytest.approx(0.825) and naive["learning_acc_mean"] == pytest.approx(0.9)
    assert replay["wall_time_s_mean"] == pytest.approx(15.0) and replay["wall_time_s_std"] == pytest.approx(math.sqrt(50))
    assert replay["trainable_params_mean"] == 1000.0 and replay["trainable_params_std"] == 0.0
    assert math.isnan(replay["peak_memory_mb_mean"])  # not logged by these runs


def test_table_is_sorted_by_mean_acc_and_counts_only_finished_runs(comparison):
    table = comparison.table()
    assert list(table["strategy"]) == ["replay", "naive"]
    assert list(table["n_finished"]) == [2, 2] and list(table["n_runs"]) == [2, 3]


def test_a_failed_child_is_listed_not_dropped(comparison, store):
    (failed,) = comparison.problems()
    assert failed.run_id == store["failed"] and failed.status == "FAILED" and "non-finite" in failed.error
    assert comparison.parent_status == "FAILED" and len(comparison.runs) == 5


def test_markdown_shows_percent_mean_and_std(comparison):
    text = markdown(comparison.table())
    lines = text.strip().splitlines()
    assert lines[0].startswith("| strategy | runs | acc (%) |") and "peak memory" not in lines[0]
    assert lines[0].startswith("| strategy | runs | acc (%) | acc 95% CI (%) | p vs best | p vs naive | bwt (%) |")
    # two runs a strategy: no interval (a t-interval would span 0.7 ± 12.706 * 0.1414 / sqrt(2) = [-1.07, 2.47]) and no test
    assert lines[2].startswith("| replay | 2/2 | 70.0 ± 14.1 | 2 runs: no interval | best | no test (< 3 runs) | -25.0 ± 21.2 |")
    assert lines[3].startswith("| naive | 2/3 | 45.0 ± 7.1 | 2 runs: no interval | no test (< 3 runs) | naive |")
    assert "| 1,000 |" in lines[3]  # constant: no ±


def test_the_table_printed_at_the_end_of_a_run_has_the_interval_and_significance_columns(comparison):
    from cl_harness.report.glance import compact_table

    lines = compact_table(comparison.table()).splitlines()
    assert lines[0].split() == ["strategy", "runs", "acc", "(%)", "acc", "95%", "CI", "(%)", "p", "vs", "best", "p", "vs", "naive",
                                "forgetting", "(%)", "bwt", "(%)", "fwt", "(%)", "wall", "time", "(s)"]
    assert lines[2].split()[:10] == ["replay", "2/2", "70.0", "±", "14.1", "2", "runs:", "no", "interval", "best"]
    assert lines[3].split()[:13] == ["naive", "2/3", "45.0", "±", "7.1", "2", "runs:", "no", "interval", "no", "test", "(<", "3"]
    assert lines[4].startswith("* p < 0.05, Holm-corrected") and lines[5].startswith("CI: t = Student t-interval")
    assert "1.000" not in lines[2] + lines[3]


def test_csv_round_trips_the_raw_table(comparison, tmp_path):
    import pandas as pd

    back = pd.read_csv(write_csv(comparison.table(), tmp_path / "t.csv"))
    assert list(back["strategy"]) == ["replay", "naive"] and back["acc_mean"][0] == pytest.approx(0.7)
    # two seeds a strategy: neither an interval nor a test
    assert back["acc_ci_low"].isna().all() and list(back["acc_ci_method"]) == ["none", "none"]
    assert list(back["test_vs_naive"]) == ["none", "none"] and not back["significant_vs_best"].any()
    assert back["p_vs_best"].isna().all() and back["mdd_vs_best"].isna().all()


def test_html_report_is_self_contained(comparison, tmp_path):
    path = write_report(comparison, tmp_path / "report")
    text = path.read_text(encoding="utf-8")
    assert path.name == schema.REPORT_HTML_ARTIFACT and "data:image/png;base64," in text
    assert not re.search(r"""src\s*=\s*["']?\s*(https?:)?//""", text, re.IGNORECASE)  # links to MLflow are fine
    assert "<link" not in text and "@import" not in text and "<script" not in text
    assert comparison.parent_run_id in text and "cl-test" in text and "70.0 ± 14.1" in text
    assert "naive/seed2/order0" in text and "FAILED" in text and "backward transfer" in text
    assert "<th>acc 95% CI (%)</th><th>p vs best</th><th>p vs naive</th>" in text and "Holm-Bonferroni" in text
    for name in (schema.COMPARISON_CSV_ARTIFACT, schema.COMPARISON_MD_ARTIFACT, "final_acc.png", "forgetting_curves.png",
                 "accuracy_matrix_replay.png", "accuracy_matrix_naive.png"):
        assert (tmp_path / "report" / name).is_file(), name


def test_plots_render_valid_pngs(comparison, tmp_path):
    means = comparison.mean_matrices()
    assert [m.strategy for m in means] == ["replay", "naive"] and means[0].n_runs == 2
    assert means[0].rows == pytest.approx(np.array([[0.9, 0.45], [0.65, 0.75]]))
    for fig in (final_acc_figure(comparison), forgetting_curves_figure(means), heatmap_figure(means[1])):
        assert png_bytes(fig).startswith(PNG_MAGIC)
    write_report(comparison, tmp_path)
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in tmp_path.glob("*.png"))


def test_log_report_attaches_the_report_to_the_parent(store, tmp_path):
    client = store["client"]
    comparison = load_comparison(client, "cl-test", store["parent"])
    log_report(client, store["parent"], comparison, tmp_path / "a")
    log_report(client, store["parent"], comparison, tmp_path / "b")  # a second call replaces, not appends
    names = {a.path for a in client.list_artifacts(store["parent"])}
    assert {schema.COMPARISON_TABLE_ARTIFACT, schema.REPORT_HTML_ARTIFACT, schema.COMPARISON_CSV_ARTIFACT, schema.COMPARISON_MD_ARTIFACT, "plots"} <= names
    assert "plots/final_acc.png" in {a.path for a in client.list_artifacts(store["parent"], schema.PLOTS_ARTIFACT_DIR)}
    table = json.loads(open(client.download_artifacts(store["parent"], schema.COMPARISON_TABLE_ARTIFACT, str(tmp_path))).read())
    assert [row[0] for row in table["data"]] == ["replay", "naive"] and "acc_mean" in table["columns"]


def test_default_parent_is_the_latest_and_orders_are_compared_by_position(store):
    comparison = load_comparison(store["client"], "orders")
    assert comparison.parent_run_id == store["new"] and comparison.by_position()
    (naive, joint) = sorted(comparison.mean_matrices(), key=lambda m: m.strategy != "naive")
    assert naive.labels == ["task 1", "task 2"] and naive.rows == pytest.approx(np.array([[0.8, 0.5], [0.4, 0.9]]))
    assert joint.steps == [2] and joint.row_label(0) == "all tasks"
    text = markdown(comparison.table())
    assert "| joint | 1/1 | 70.0 | 1 run: no interval | best | no test (< 3 runs) | - |" in text  # one run: no ± nor interval; joint logs no bwt
    assert load_comparison(store["client"], "orders", store["old"]).runs[0].tasks == ["t1", "t2"]


def test_unknown_experiment_is_a_config_error_with_a_suggestion(store):
    with pytest.raises(ConfigError) as info:
        load_comparison(store["client"], "cl-tset")
    message = str(info.value)
    assert "'cl-tset'" in message and "did you mean 'cl-test'?" in message and "orders" in message


def test_unknown_or_wrong_parent_is_a_config_error(store):
    with pytest.raises(ConfigError, match="no run with id"):
        load_comparison(store["client"], "cl-test", "0" * 32)
    with pytest.raises(ConfigError, match="not a cl-harness parent run"):
        load_comparison(store["client"], "cl-test", store["failed"])
    with pytest.raises(ConfigError, match="belongs to experiment"):
        load_comparison(store["client"], "orders", store["parent"])


def test_a_parent_without_finished_children_still_gets_a_report(store, tmp_path):
    comparison = load_comparison(store["client"], "empty")
    assert comparison.parent_status == "RUNNING" and comparison.mean_matrices() == []
    assert list(comparison.table()["n_finished"]) == [0]
    text = write_report(comparison, tmp_path).read_text(encoding="utf-8")
    assert "No plots" in text and "naive/seed0/order0" in text and "0 of 1 finished" in text
    assert "| naive | 0/1 |" in markdown(comparison.table())


def test_cost_columns_sit_beside_accuracy_and_forgetting():
    import pandas as pd

    from cl_harness.report.compare import TABLE_METRICS, display_rows

    row = {"strategy": "o_lora", "n_finished": 1, "n_runs": 1}
    values = {"acc": 0.54, "forgetting": 0.08, "trainable_params": 75268.0, "train_time_per_task_s": 46.6, "extra_memory_mb": 448.0}
    for metric in TABLE_METRICS:
        row[f"{metric}_mean"], row[f"{metric}_std"] = values.get(metric, math.nan), math.nan
    headers, rows = display_rows(pd.DataFrame([row]))
    assert headers == ["strategy", "runs", "acc (%)", "forgetting (%)", "trainable params", "train time/task (s)", "extra memory (MB)"]
    assert rows == [["o_lora", "1/1", "54.0", "8.0", "75,268", "46.6", "448"]]  # one run: no ±


def test_html_links_child_runs_to_mlflow_scrolls_wide_tables_and_grids_heatmaps(comparison, tmp_path, monkeypatch):
    monkeypatch.delenv("CL_HARNESS_UI_URL", raising=False)
    text = write_report(comparison, tmp_path).read_text(encoding="utf-8")
    for run in comparison.runs:  # every child id is a link to its page in `cl-harness ui` (a local store's UI)
        url = f"http://127.0.0.1:5000/#/experiments/{comparison.experiment_id}/runs/{run.run_id}?workflowType=machine_learning"
        assert f'<a href="{url}">{run.run_id}</a>' in text
    assert text.count("<table") == text.count('<div class="scroll"><table')  # every table inside a scroller
    assert ".scroll { overflow-x: auto;" in text
    grid = text[text.index('<div class="grid">'):]
    assert grid.count("<img") == 2 and "replay: accuracy matrix" in grid and "naive: accuracy matrix" in grid
    assert "5 child runs" in text and " ± -" not in text


def test_html_links_go_to_the_tracking_server_when_there_is_one(comparison, tmp_path):
    from dataclasses import replace

    served = replace(comparison, tracking_uri="http://mlflow.example:8080/")
    text = write_report(served, tmp_path).read_text(encoding="utf-8")
    assert f'href="http://mlflow.example:8080/#/experiments/{comparison.experiment_id}/runs/' in text
