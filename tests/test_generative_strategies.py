"""Strategies on a generative backbone (a tiny random Llama): each shows its behaviour, not only that it runs."""

from __future__ import annotations

import pytest
import torch
from generative_helpers import (
    run_generative,
    write_generative_experiment,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run faster on one thread

FAST = {"epochs": 5, "batch_size": 4, "lr": 3e-3}


def run(tmp_path, backbone, strategy, name: str, tasks: int = 3, **training):
    folder = tmp_path / name
    folder.mkdir()
    return run_generative(write_generative_experiment(folder, backbone, "causal_lm", [strategy], tasks=tasks, **{**FAST, **training}))


def test_replay_of_prompt_answer_pairs_forgets_less_than_naive(tmp_path, tiny_llama):
    naive, _ = run(tmp_path, tiny_llama, "naive", "naive")
    replay, learner = run(tmp_path, tiny_llama, {"replay": {"mem_size": 40, "policy": "experience_balanced"}}, "replay")
    assert naive.matrix[0][0] >= 0.85 and replay.matrix[0][0] >= 0.85  # both learned t1 (same seed, same first task)
    assert replay.matrix[-1][0] >= naive.matrix[-1][0] + 0.2  # ...and replay kept much more of it
    assert replay.metrics["forgetting"] < naive.metrics["forgetting"]
    (memory,) = [p.memory for p in learner.plugins]
    assert sorted(memory.groups) == [0, 1, 2] and len(memory) <= 40  # every task's share: prompts with their answers
    rows, units = memory.groups[0]
    assert set(units.tolist()) <= {0, 1} and bool((rows[:, 2] >= 0).any(dim=1).all())


def test_ewc_penalty_is_positive_and_pulls_weights_toward_the_old_ones(tmp_path, tiny_llama):
    from cl_harness.strategies.generative.ewc import GenerativeEWC

    _ewc, learner = run(tmp_path, tiny_llama, {"ewc": {"ewc_lambda": 1.0e5}}, "ewc", tasks=2)
    _naive, naive_learner = run(tmp_path, tiny_llama, "naive", "naive", tasks=2)
    (plugin,) = learner.plugins
    assert len(plugin.terms) == 2  # separate mode: one (Fisher, anchor) per task
    fisher, _anchor = plugin.terms[0]
    assert sum(float(f.sum()) for f in fisher.values()) > 0
    after_task_1 = GenerativeEWC(1.0, "separate", 1.0)
    after_task_1.terms = [plugin.terms[0]]
    # the same seed trains the same first task: the anchor is where both runs stood after task 1
    moved_ewc = float(after_task_1.distance(learner.model))
    moved_naive = float(after_task_1.distance(naive_learner.model))
    assert 0 < moved_ewc < 0.5 * moved_naive
    x = learner.task.train_inputs[:4]
    assert float(plugin.penalty(learner, x, None, None)) == pytest.approx(1.0e5 / 2 * float(plugin.distance(learner.model)), rel=1e-5)
    assert float(plugin.penalty(learner, x, None, None)) > 0


def test_lwf_adds_a_kl_term_against_the_frozen_previous_model(tmp_path, tiny_llama, monkeypatch):
    from cl_harness.models.generative import IGNORE
    from cl_harness.strategies.generative.lwf import GenerativeLwF

    teachers = []
    after_task = GenerativeLwF.after_task

    def keep_teacher(self, learner):
        after_task(self, learner)
        teachers.append(self.teacher)

    monkeypatch.setattr(GenerativeLwF, "after_task", keep_teacher)
    _lwf, learner = run(tmp_path, tiny_llama, {"lwf": {"alpha": 5.0, "temperature": 2.0}}, "lwf", tasks=2)
    _naive, naive_learner = run(tmp_path, tiny_llama, "naive", "naive", tasks=2)
    (plugin,) = learner.plugins
    old = teachers[0]  # the model after t1, frozen: what LwF distilled from while training t2
    assert not old.training and not any(p.requires_grad for p in old.parameters())
    plugin.teacher = old
    model = learner.model.eval()
    x = learner.task.train_inputs[:8]  # t2's rows

    def kl(student) -> float:
        """KL(old / T || student / T) over real answer tokens, by hand."""
        with torch.no_grad():
            logits, teacher_logits = student(x), old(x)
        valid = x[:, 2][:, : logits.shape[1]] != IGNORE
        p_old = (teacher_logits[valid] / 2.0).softmax(-1)
        return float((p_old * (p_old.log() - (logits[valid] / 2.0).log_softmax(-1))).sum(-1).mean())

    with torch.no_grad():
        term = plugin.penalty(learner, x, None, model(x))
    assert float(term) == pytest.approx(5.0 * kl(model), rel=1e-3) and float(term) > 0
    # both runs left the same model after t1 (same seed); on t2's prompts LwF stayed closer to it than naive did
    assert kl(model) < 0.5 * kl(naive_learner.model.eval())


def test_o_lora_keeps_each_new_adapter_orthogonal_to_the_earlier_ones(tmp_path, tiny_llama):
    from cl_harness.models.lora import lora_layers

    def overlap(model) -> float:
        """sum over layers and adapter pairs i < j of |A_i A_j^T|, relative to the adapters' norms."""
        total = 0.0
        for layer in lora_layers(model):
            for j in range(1, len(layer.lora_a)):
                for i in range(j):
                    a, b = layer.lora_a[i].detach(), layer.lora_a[j].detach()
                    total += float((a @ b.T).abs().sum() / (a.norm() * b.norm()))
        return total

    strategy = {"target_modules": ["q_proj", "v_proj"], "lora_rank": 4}
    o_lora, o_learner = run(tmp_path, tiny_llama, {"o_lora": {**strategy, "orthogonal_lambda": 1.0}}, "o_lora", lr=1e-2)
    _inc, inc_learner = run(tmp_path, tiny_llama, {"inc_lora": strategy}, "inc_lora", lr=1e-2)
    layers = lora_layers(o_learner.model)
    assert len(layers) == 4 and all(len(layer.lora_a) == 3 for layer in layers)  # q, v of 2 layers; one adapter per task
    assert o_lora.metrics["trainable_params"] < 0.5 * o_lora.metrics["total_params"]
    assert overlap(o_learner.model) < 0.5 * overlap(inc_learner.model)


def test_zero_shot_trains_nothing_and_its_one_row_is_the_real_initial_row(tmp_path, tiny_llama):
    result, _learner = run(tmp_path, tiny_llama, "zero_shot", "zero_shot")
    assert result.matrix == [result.initial] and result.metrics["acc"] == pytest.approx(sum(result.initial) / 3)
    assert result.metrics["train_examples_per_s"] == 0.0


def test_in_context_puts_seeded_demonstrations_in_the_prompt_and_scores_them(tmp_path, tiny_llama):
    from cl_harness.config.loader import load_experiment
    from cl_harness.grid.prepare import check_experiment, prepare_experiment

    def prepared(seed: int):
        folder = tmp_path / f"seed{seed}"
        folder.mkdir(exist_ok=True)
        path = write_generative_experiment(folder, tiny_llama, "causal_lm", [{"in_context": {"shots": 2, "seed": seed}}], tasks=2)
        return prepare_experiment(check_experiment(load_experiment(path))), path

    (first, path), (again, _), (other, _) = prepared(0), prepared(0), prepared(1)
    tokenizer = first.checked.tokenizer
    task = first.encoded[0]
    row = task.in_context_inputs[0]
    prompt = tokenizer.decode(row[0][row[1].bool()])
    assert prompt.count("answer :") == 2 * 2 + 1  # 2 shots x 2 classes, then the question
    assert prompt.count("answer : sports") == 2 and prompt.count("answer : cooking") == 2
    assert torch.equal(task.in_context_inputs, again.encoded[0].in_context_inputs)
    assert not torch.equal(task.in_context_inputs, other.encoded[0].in_context_inputs)
    result, _ = run_generative(path)
    zero_shot, _ = run(tmp_path, tiny_llama, "zero_shot", "zs", tasks=2)
    assert result.matrix == [result.initial] and result.initial != zero_shot.initial  # scored with the demonstrations


def test_der_stores_answer_logits_and_replays_them(tmp_path, tiny_llama):
    _, learner = run(tmp_path, tiny_llama, {"der": {"mem_size": 30, "alpha": 0.5, "beta": 0.5}}, "der", tasks=2)
    (plugin,) = learner.plugins
    assert len(plugin.rows) == 30 and plugin.seen == 2 * 40 * FAST["epochs"]
    vocab = learner.model.lm.config.vocab_size
    assert all(logits.shape == (2, vocab) for logits in plugin.logits)  # label word + eos, the full vocabulary
    x = learner.task.train_inputs[:4]
    with torch.no_grad():
        assert float(plugin.penalty(learner, x, None, learner.model(x))) > 0


def test_agem_projects_a_gradient_that_would_raise_the_memory_loss(tmp_path, tiny_llama):
    from cl_harness.strategies.generative.agem import GenerativeAGEM

    _, learner = run(tmp_path, tiny_llama, {"agem": {"patterns_per_experience": 20, "sample_size": 20}}, "agem", tasks=2)
    (plugin,) = learner.plugins
    assert [len(m) for m in plugin.memory] == [20, 20]
    model = learner.model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    # a gradient pointing against the reference (minus the memory gradient) is projected onto its normal plane
    fresh = GenerativeAGEM(20, 20)
    fresh.memory = plugin.memory[:1]
    fresh.extend_batch(learner, None, None)
    for p, r in zip(params, fresh.reference):
        p.grad = -r.clone()
    fresh.after_backward(learner)
    dot = sum(float((p.grad * r).sum()) for p, r in zip(params, fresh.reference))
    assert abs(dot) < 1e-4 * sum(float((r * r).sum()) for r in fresh.reference)
