"""Results at a glance: terminal output, run descriptions, summary metrics, deep links, progress bars, warnings, CLI."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from conftest import write_demo_stream, write_experiment

from cl_harness.cli import main
from cl_harness.report.compare import TABLE_METRICS, format_mean_std
from cl_harness.report.glance import (
    child_description,
    compact_table,
    count,
    summary_metrics,
)
from cl_harness.runner.hooks import ProgressBar
from cl_harness.runner.quiet import known_warnings_silenced
from cl_harness.tracking.links import experiment_url, run_url, ui_base_url


def table_of(rows: dict[str, dict[str, tuple[float, float]]], n_runs: int = 2) -> pd.DataFrame:
    """A Comparison.table()-shaped frame: per strategy, (mean, std) per metric; NaN elsewhere."""
    records = []
    for strategy, values in rows.items():
        record = {"strategy": strategy, "n_finished": n_runs, "n_runs": n_runs}
        for metric in TABLE_METRICS:
            record[f"{metric}_mean"], record[f"{metric}_std"] = values.get(metric, (math.nan, math.nan))
        records.append(record)
    return pd.DataFrame(records)


# --- numbers and words ----------------------------------------------------------------------------


def test_plus_minus_only_where_runs_differ():
    assert format_mean_std(0.9916666, math.nan, "acc") == "99.2"  # one run
    assert format_mean_std(1000.0, 0.0, "trainable_params") == "1,000"  # constant
    assert format_mean_std(0.7, 0.1414, "acc") == "70.0 ± 14.1"
    assert format_mean_std(math.nan, math.nan, "bwt") == "-"


def test_counts_are_singular_for_one():
    assert count(1, "run") == "1 run" and count(2, "run") == "2 runs" and count(0, "run") == "0 runs"


def test_summary_metrics_are_fractions_named_summary_measure_strategy():
    table = table_of({"replay": {"acc": (0.7, 0.1), "forgetting": (0.25, 0.0)}, "joint": {"acc": (0.9, math.nan)}})
    metrics = summary_metrics(table)
    assert metrics == {"summary/acc/replay": 0.7, "summary/forgetting/replay": 0.25, "summary/acc/joint": 0.9}


def test_compact_table_shows_percent_with_units_and_no_interval_for_one_run():
    table = table_of({"replay": {"acc": (0.7, 0.1414), "forgetting": (0.25, 0.05), "wall_time_s": (12.0, 0.0)},
                      "naive": {"acc": (0.45, math.nan), "forgetting": (0.9, math.nan), "wall_time_s": (5.0, math.nan)}})
    lines = compact_table(table).splitlines()
    assert lines[0].split() == ["strategy", "runs", "acc", "(%)", "forgetting", "(%)", "wall", "time", "(s)"]
    assert lines[2].split() == ["replay", "2/2", "70.0", "±", "14.1", "25.0", "±", "5.0", "12.0"]
    assert lines[3].split() == ["naive", "2/2", "45.0", "90.0", "5.0"]


def test_child_description_is_the_accuracy_matrix_in_percent():
    text = child_description("naive/seed0/order0", ["a", "b"], [0.5, 0.25], [[1.0, 0.0], [0.125, 0.875]],
                             {"acc": 0.5, "bwt": -0.875})
    assert "| accuracy (%) | a | b |" in text
    assert "| initial | 50.0 | 25.0 |" in text and "| after a | 100.0 | 0.0 |" in text and "| after b | 12.5 | 87.5 |" in text
    assert "acc (%) 50.0" in text and "bwt (%) -87.5" in text


# --- deep links -----------------------------------------------------------------------------------


def test_deep_links_use_the_ui_routes_and_the_machine_learning_view(monkeypatch):
    monkeypatch.delenv("CL_HARNESS_UI_URL", raising=False)
    base = ui_base_url("sqlite:///mlruns/mlflow.db")
    assert base == "http://127.0.0.1:5000"
    assert run_url(base, "3", "abc") == "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning"
    assert experiment_url(base, "3", "k1") == "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning&viewStateShareKey=k1"
    assert ui_base_url("https://user:secret@mlflow.example/") == "https://mlflow.example"  # the server's own UI, no credentials
    monkeypatch.setenv("CL_HARNESS_UI_URL", "http://box:8080/")
    assert ui_base_url("sqlite:///x.db") == "http://box:8080"


# --- progress bar ---------------------------------------------------------------------------------


def fake_strategy(batches: int, task: int) -> SimpleNamespace:
    return SimpleNamespace(train_epochs=1, dataloader=[None] * batches, experience=SimpleNamespace(current_experience=task),
                           loss=torch.tensor(0.0))


def test_progress_bar_names_the_run_and_task_and_keeps_a_running_mean_loss(capsys):
    bar = ProgressBar("run 2/9: replay/seed0/order0", enabled=True, loss_every=20, task_names=["a", "b", "c"])
    strategy = fake_strategy(3, 1)
    bar.before_training_exp(strategy)
    assert bar.bar.desc == "run 2/9: replay/seed0/order0 · train task 2/3: b"
    for loss in (3.0, 1.0, 2.0):  # fewer batches than loss_every: the loss still moves, and the end shows the mean
        strategy.loss = torch.tensor(loss)
        bar.after_training_iteration(strategy)
    assert bar.bar.postfix == "loss=3.000"  # shown after the first batch
    tqdm_bar = bar.bar
    bar.after_training_exp(strategy)
    assert tqdm_bar.postfix == "loss=2.000" and bar.mean_loss == pytest.approx(2.0)


def test_progress_bar_updates_the_loss_every_few_batches():
    bar = ProgressBar("run 1/1: naive/seed0/order0", enabled=True, loss_every=5, task_names=["a"])
    strategy = fake_strategy(12, 0)
    bar.before_training_exp(strategy)
    shown = []
    for i in range(12):
        strategy.loss = torch.tensor(float(i))
        bar.after_training_iteration(strategy)
        shown.append(bar.bar.postfix)
    assert shown[4] == "loss=2.000" and shown[9] == "loss=4.500"  # batches 5 and 10: means of 0..4 and 0..9
    assert len(set(shown)) == 3
    bar.after_training_exp(strategy)


def test_without_verbose_a_library_bar_is_off_and_the_training_bar_still_shows():
    """A library that draws its own tqdm bar (transformers' GGUF loader) prints nothing; the harness's bar does.
    In a fresh interpreter, as the CLI starts: tqdm reads its settings from the environment when first imported."""
    code = """if True:
        from types import SimpleNamespace
        from cl_harness.cli import _quiet_libraries
        _quiet_libraries(verbose=False)
        from tqdm.auto import tqdm
        from cl_harness.runner.hooks import ProgressBar
        for _ in tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."):
            pass
        strategy = SimpleNamespace(train_epochs=1, dataloader=[None, None], experience=SimpleNamespace(current_experience=0))
        bar = ProgressBar("run 1/1: naive/seed0/order0", enabled=True, task_names=["a"])
        bar.before_training_exp(strategy)
        bar.bar.close()
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "GGUF" not in done.stderr and "train task 1/1: a" in done.stderr


def test_progress_bar_labels_joint_and_cumulative_data():
    assert ProgressBar("r", task_names=["a", "b", "c"], train_data="joint").task_label(2) == "all 3 tasks (joint)"
    assert ProgressBar("r", task_names=["a", "b", "c"], train_data="cumulative").task_label(1) == "tasks 1-2/3 (cumulative): b"


# --- warnings -------------------------------------------------------------------------------------


def test_avalanche_deprecation_warnings_are_silenced_inside_the_loops_only(capsys):
    from avalanche._annotations import deprecated

    @deprecated(0.7, "use something else")
    def old_api():
        return 1

    with known_warnings_silenced():
        old_api()  # its wrapper resets the filters to "once": the warning still must not reach the terminal
        warnings.warn("a harness problem", UserWarning, stacklevel=1)
    err = capsys.readouterr().err
    assert "deprecated" not in err and "a harness problem" in err
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old_api()
    assert any("Call to deprecated function old_api" in str(w.message) for w in caught)  # outside: untouched


# --- CLI ------------------------------------------------------------------------------------------


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out.startswith("cl-harness 0.")


def test_validate_names_the_classes_of_a_stream_and_of_an_experiment(tmp_path, tiny_bert, capsys):
    stream = write_demo_stream(tmp_path, "class_incremental", per_class=8, tasks=2)
    assert main(["validate", str(stream)]) == 0
    out = capsys.readouterr().out
    assert "2 classes" in out and "sports, cooking" in out and "astronomy, finance" in out
    experiment = write_experiment(tmp_path, tiny_bert, ["naive"])
    assert main(["validate", str(experiment)]) == 0
    out = capsys.readouterr().out
    assert "sports, cooking" in out and "1 run\n" in out and "1 runs" not in out


def test_ui_help_names_host_port_and_their_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["ui", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--port PORT port to listen on (default 5000)" in out and "--host HOST" in out and "127.0.0.1" in out
    assert "(default 1)" in out


def test_ui_refuses_a_busy_port_and_says_what_to_do(tmp_path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["ui", "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert f"port {port} on 127.0.0.1 is already in use" in err and f"--port {port + 1}" in err


@pytest.fixture(scope="module")
def two_strategy_run(tmp_path_factory, tiny_bert):
    """`cl-harness run` on a tiny 2-strategy grid into a fresh sqlite store; (stdout, uri, folder)."""
    folder = tmp_path_factory.mktemp("glance")
    write_demo_stream(folder, "class_incremental", per_class=8, tasks=2)
    experiment = write_experiment(folder, tiny_bert, ["naive", {"replay": {"mem_size": 8}}])
    uri = f"sqlite:///{folder}/store/mlflow.db"
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["run", str(experiment), "--tracking-uri", uri, "--no-progress"])
    assert code == 0, out.getvalue()
    return out.getvalue(), uri, folder


def test_run_ends_with_the_table_the_report_and_a_deep_link(two_strategy_run, monkeypatch):
    from mlflow import MlflowClient

    out, uri, _ = two_strategy_run
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny")
    (parent,) = client.search_runs([experiment.experiment_id], "tags.`cl_harness.role` = 'parent'")
    tail = out[out.index("2 of 2 runs finished"):]
    header = next(line for line in tail.splitlines() if line.startswith("strategy"))
    assert header.split()[:10] == ["strategy", "runs", "acc", "(%)", "acc", "95%", "CI", "(%)", "p", "vs"]
    assert "\nnaive " in tail and "\nreplay " in tail
    assert tail.count("1 run: no interval") == 2  # one seed: no meaningless ± or interval
    report = Path(tail.split("report:")[1].split()[0])
    assert report.is_file() and report.name == "report.html"
    link = f"http://127.0.0.1:5000/#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}?workflowType=machine_learning"
    assert f"parent run: {link}  (serve it with: cl-harness ui)" in tail
    assert f"viewStateShareKey=cl-harness-{parent.info.run_id}" in tail


def test_the_parent_run_carries_the_answer(two_strategy_run, tmp_path):
    from mlflow import MlflowClient

    _, uri, _ = two_strategy_run
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny")
    runs = client.search_runs([experiment.experiment_id])
    (parent,) = [r for r in runs if r.data.tags["cl_harness.role"] == "parent"]
    children = {r.data.tags["strategy"]: r for r in runs if r.data.tags["cl_harness.role"] == "child"}
    # one convention: fractions in the store, the parent's summary is the children's mean, unrounded
    for strategy, child in children.items():
        assert parent.data.metrics[f"summary/acc/{strategy}"] == child.data.metrics["acc"]
        assert parent.data.metrics[f"summary/forgetting/{strategy}"] == child.data.metrics["forgetting"]
        assert 0.0 <= child.data.metrics["acc"] <= 1.0
        note = child.data.tags["mlflow.note.content"]
        assert "| accuracy (%) | t1 | t2 |" in note and f"{100 * child.data.metrics['acc']:.1f}" in note
    description = parent.data.tags["mlflow.note.content"]
    assert "| strategy | runs | acc (%) |" in description and "| naive | 1/1 |" in description
    assert f"(#/experiments/{experiment.experiment_id}/runs/{parent.info.run_id}/artifacts/report.html?workflowType=machine_learning)" in description
    # the report was written after the parent ended: it shows the final status, never RUNNING
    html = Path(client.download_artifacts(parent.info.run_id, "report.html", str(tmp_path))).read_text(encoding="utf-8")
    assert parent.info.status == "FINISHED" and "status FINISHED" in html and "RUNNING" not in html
    csv = pd.read_csv(client.download_artifacts(parent.info.run_id, "comparison.csv", str(tmp_path)))
    assert dict(zip(csv["strategy"], csv["acc_mean"])) == pytest.approx({s: c.data.metrics["acc"] for s, c in children.items()})
    view = json.loads(experiment.tags[f"mlflow.sharedViewState.cl-harness-{parent.info.run_id}"])
    assert view["selectedColumns"][:2] == ["metrics.`acc`", "metrics.`forgetting`"]
    assert "metrics.`summary/acc/naive`" in view["selectedColumns"]


def test_ui_on_a_tracking_server_points_at_its_own_ui(capsys):
    assert main(["ui", "--tracking-uri", "http://user:pw@mlflow.example:8080"]) == 0
    out = capsys.readouterr().out
    assert "open http://mlflow.example:8080/#/experiments?workflowType=machine_learning" in out and "pw" not in out
