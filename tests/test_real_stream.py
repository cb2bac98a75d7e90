"""End to end on real data with the bundled MiniLM: replay forgets clearly less than naive fine-tuning."""

from __future__ import annotations

import pytest

from cl_harness.cli import main

REPO_EXPERIMENT = "experiments/agnews_replay_vs_naive.yaml"


@pytest.mark.slow
def test_replay_beats_naive_on_a_real_class_incremental_stream(benchmark_dir, tmp_path, capsys):
    from mlflow import MlflowClient

    from conftest import REPO

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    overrides = [
        "--set", "training.max_length=32",
        "--set", "training.epochs=2",
        "--set", "training.lr=2e-4",
        "--set", f"checkpoint_dir={tmp_path / 'runs'}",
        "--data-root", str(benchmark_dir),
        "--tracking-uri", uri,
        "--no-progress",
    ]
    # 32 training and 24 test examples per class, 2 epochs at 32 tokens: about a quarter of a minute of training on 2 CPU cores.
    stream_sizes = (REPO / "streams/local/agnews_2x2.yaml").read_text()
    small_stream = tmp_path / "agnews_small.yaml"
    small_stream.write_text(stream_sizes.replace("train_per_class: 500", "train_per_class: 32").replace("test_per_class: 200", "test_per_class: 24"))
    code = main(["run", str(REPO / REPO_EXPERIMENT), "--set", f"stream={small_stream}", *overrides])
    assert code == 0, capsys.readouterr().err

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("agnews-replay-vs-naive")
    children = client.search_runs([experiment.experiment_id], "tags.`cl_harness.role` = 'child'")
    runs = {r.data.tags["strategy"]: r.data.metrics for r in children}
    print({name: {k: round(v, 3) for k, v in m.items()} for name, m in runs.items()})
    naive, replay = runs["naive"], runs["replay"]
    assert naive["learning_acc"] > 0.8  # MiniLM learns each task
    assert naive["forgetting"] > 0.5  # and plain fine-tuning forgets the first task's classes
    assert replay["acc"] > naive["acc"] + 0.15
    assert replay["forgetting"] < naive["forgetting"] - 0.3
