"""Linear probing: the probe against scikit-learn's logistic regression, its summary by hand, and the probing matrix of a
run recomputed from features extracted here and from the features the run saved."""

from __future__ import annotations

import contextlib
import io
import json
import math

import numpy as np
import pytest
import torch
from conftest import write_demo_stream, write_experiment

from cl_harness.evaluation.probe import PROBE_L2, features, fit_probe, probe_summary
from cl_harness.tracking import schema

sklearn_linear = pytest.importorskip("sklearn.linear_model")


def sklearn_accuracy(train_x, train_y, test_x, test_y) -> float:
    """The same objective through scikit-learn: C * sum CE + ||W||^2 / 2 is n * C times mean CE + ||W||^2 / (2 n C). With two
    classes scikit-learn fits one vector w = w_1 - w_0; the softmax optimum has w_0 = -w_1, so its penalty is half as large."""
    x = np.asarray(train_x, dtype=np.float64)
    mean, std = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-6)
    classes = len(np.unique(train_y))
    if classes == 1:
        return float(np.mean(np.asarray(test_y) == train_y[0]))
    model = sklearn_linear.LogisticRegression(C=(2.0 if classes == 2 else 1.0) / (len(x) * PROBE_L2), max_iter=5000, tol=1e-10)
    model.fit((x - mean) / std, train_y)
    return float(np.mean(model.predict((np.asarray(test_x, dtype=np.float64) - mean) / std) == np.asarray(test_y)))


def test_the_probe_reaches_scikit_learns_optimum():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(120, 16, generator=generator) * 3 + 1  # not standardised
    y = torch.tensor([3, 7, 9])[torch.randint(0, 3, (120,), generator=generator)]  # labels are units of a shared head
    x[:, 0] += 6.0 * (y == 7) - 6.0 * (y == 9)  # one informative direction among noise
    probe = fit_probe(x[:80], y[:80])
    assert set(probe.predict(x[80:]).tolist()) <= {3, 7, 9}
    z = ((x[:80].double() - x[:80].double().mean(0)) / x[:80].double().std(0, unbiased=False))
    reference = sklearn_linear.LogisticRegression(C=1.0 / (80 * PROBE_L2), max_iter=5000, tol=1e-12).fit(z.numpy(), y[:80].numpy())
    assert probe.weight.T.numpy() == pytest.approx(reference.coef_, abs=1e-4)
    ours = float((probe.predict(x[80:]) == y[80:]).double().mean())
    assert ours == sklearn_accuracy(x[:80], y[:80].numpy(), x[80:], y[80:].numpy()) and ours > 0.6


def test_probe_summary_by_hand():
    nan = math.nan
    rows = {0: [0.5, 0.5, 0.5], 1: [0.9, nan, nan], 2: [0.7, 0.8, nan], 3: [0.6, 0.9, 0.95]}
    # acc: (0.6 + 0.9 + 0.95) / 3; bwt: ((0.6 - 0.9) + (0.9 - 0.8)) / 2; forgetting: ((0.9 - 0.6) + (0.8 - 0.9)) / 2
    assert probe_summary(rows, 3) == pytest.approx({"acc": 2.45 / 3, "bwt": -0.1, "forgetting": 0.1})
    del rows[2]  # joint training: one step, after the last task
    assert probe_summary(rows, 3) == pytest.approx({"acc": 2.45 / 3})
    assert probe_summary({0: [0.5, 0.5, 0.5]}, 3) == {}


def probed_run(tmp_path, tiny_bert, probe: bool):
    from cl_harness.config.loader import load_experiment
    from cl_harness.grid.prepare import check_experiment, prepare_experiment
    from cl_harness.runner.run import TrainingRun

    write_demo_stream(tmp_path, "class_incremental", per_class=12, tasks=3)
    path = write_experiment(tmp_path, tiny_bert, ["naive"], probe=probe)
    prepared = prepare_experiment(check_experiment(load_experiment(path)))
    run = TrainingRun(prepared.run_plan(prepared.runs[0]), show_progress=False)
    return run, run.execute()


def test_the_probing_matrix_recomputed_from_features_extracted_here(tmp_path, tiny_bert):
    run, result = probed_run(tmp_path, tiny_bert, probe=True)
    (tmp_path / "plain").mkdir()
    plain = probed_run(tmp_path / "plain", tiny_bert, probe=False)[1]
    assert result.matrix == plain.matrix  # probing moves neither the model nor the random stream
    rows, saved, tasks = run.probe.rows, run.probe.saved, run.plan.tasks
    assert sorted(rows) == [0, 1, 2, 3] and not any(math.isnan(v) for v in rows[0])
    assert [sum(not math.isnan(v) for v in rows[step]) for step in (1, 2, 3)] == [1, 2, 3]  # the tasks trained so far
    model = run.model.eval()
    with torch.no_grad():  # the final model's features, without the run's batching or fused scoring path
        for task in tasks:
            own = model.encode(task.test_inputs, chunked=False)
            assert saved[schema.probe_features_key(3, task.name, "test", "x")] == pytest.approx(own.numpy(), abs=1e-4)
            assert (saved[schema.probe_features_key(3, task.name, "test", "y")] == task.test_targets.numpy()).all()
    for step, row in rows.items():  # every cell again, through scikit-learn, from the saved features
        for j, task in enumerate(tasks):
            if not math.isnan(row[j]):
                arrays = [saved[schema.probe_features_key(step, task.name, s, p)] for s in ("train", "test") for p in "xy"]
                assert row[j] == sklearn_accuracy(*arrays)
    extracted = features(model, tasks[0].train_inputs, tasks[0].index, 7, "cpu")
    assert extracted.numpy() == pytest.approx(saved[schema.probe_features_key(3, tasks[0].name, "train", "x")], abs=1e-4)


def test_a_probed_grid_logs_the_probing_matrix_and_compares_it(tmp_path, tiny_bert):
    from mlflow import MlflowClient

    from cl_harness.cli import main

    write_demo_stream(tmp_path, "class_incremental", per_class=8, tasks=2)
    experiment = write_experiment(tmp_path, tiny_bert, ["naive", {"replay": {"mem_size": 8}}], probe=True)
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(["run", str(experiment), "--tracking-uri", uri, "--no-progress"]) == 0
    assert "probe acc (%)" in out.getvalue() and "probe forgetting (%)" in out.getvalue()
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    (parent,) = [r for r in runs if r.data.tags[schema.ROLE_TAG] == schema.PARENT_ROLE]
    for child in (r for r in runs if r.data.tags[schema.ROLE_TAG] == schema.CHILD_ROLE):
        data = json.loads(open(client.download_artifacts(child.info.run_id, schema.PROBE_MATRIX_ARTIFACT, str(tmp_path))).read())
        assert data["tasks"] == ["t1", "t2"] and data["matrix"][0][1] is None and None not in data["matrix"][1]
        history = client.get_metric_history(child.info.run_id, schema.probe_acc_metric("t1"))
        assert [m.step for m in history] == [0, 1, 2] and [m.value for m in history] == [data["initial"][0], *(r[0] for r in data["matrix"])]
        saved = np.load(client.download_artifacts(child.info.run_id, schema.PROBE_FEATURES_ARTIFACT, str(tmp_path)))
        assert data["matrix"][1][0] == sklearn_accuracy(*(saved[schema.probe_features_key(2, "t1", s, p)] for s in ("train", "test") for p in "xy"))
        metrics = child.data.metrics
        assert metrics["probe_acc"] == pytest.approx(np.mean(data["matrix"][1]))
        assert metrics["probe_forgetting"] == pytest.approx(data["matrix"][0][0] - data["matrix"][1][0])
        strategy = child.data.tags[schema.STRATEGY_TAG]
        assert parent.data.metrics[schema.summary_key("probe_acc", strategy)] == metrics["probe_acc"]


@pytest.mark.parametrize("kind", ["causal_lm", "seq2seq"])
def test_a_language_model_is_probed_on_its_prompt_features(kind, tmp_path, tiny_llama, tiny_t5):
    """The features are the LM's own states for each prompt read alone, without padding: a causal LM's last hidden state at
    the prompt's last token, a seq2seq encoder's states averaged over the prompt."""
    from generative_helpers import run_generative, write_generative_experiment

    from cl_harness.models.generative import trim_answers

    path = write_generative_experiment(tmp_path, tiny_llama if kind == "causal_lm" else tiny_t5, kind, ["naive"], tasks=2,
                                       per_class=6, scenario="task_incremental", batch_size=4, probe=True)
    run = run_generative(path)[1]
    rows, saved, tasks = run.probe.rows, run.probe.saved, run.plan.tasks
    assert sorted(rows) == [0, 1, 2] and [sum(not math.isnan(v) for v in rows[step]) for step in (0, 1, 2)] == [2, 1, 2]
    lm = run.model.eval().lm
    prompt, mask, _, _ = trim_answers(tasks[1].test_inputs[:3])
    with torch.no_grad():
        for i in range(3):
            ids = prompt[i, : int(mask[i].sum())][None]  # (1, prompt): the prompt alone
            if kind == "causal_lm":
                own = lm(input_ids=ids, output_hidden_states=True).hidden_states[-1][0, -1]
            else:
                own = lm.get_encoder()(input_ids=ids).last_hidden_state[0].mean(0)
            assert saved[schema.probe_features_key(2, tasks[1].name, "test", "x")][i] == pytest.approx(own.numpy(), abs=1e-4)
