"""Every registered strategy on every backbone kind it declares: a tiny BERT, a tiny Llama and a tiny T5.

One common tester (in the style of PEFT's ``test_custom_models.py``): each case trains the strategy on a two-task
demo stream through the one training loop, checks what every run must hold, then the behaviour that shows the
strategy acts (its own check below), against naive at the same seed where that is the evidence.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch
from conftest import write_demo_stream, write_experiment
from generative_helpers import build_tiny_llama, build_tiny_t5, write_generative_experiment

from cl_harness.strategies import default_registry

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny models run faster on one thread

REGISTRY = default_registry()
KINDS = ("encoder", "causal_lm", "seq2seq")
TRAINING = {  # per kind: settings under which a tiny model learns a demo task
    "encoder": {"epochs": 3, "batch_size": 8, "lr": 3e-3, "eval_batch_size": 32},
    "causal_lm": {"epochs": 5, "batch_size": 4, "lr": 3e-3, "eval_batch_size": 32},
    "seq2seq": {"epochs": 5, "batch_size": 4, "lr": 3e-3, "eval_batch_size": 32},
}
TRAIN_ROWS = 40  # per task: 2 classes x 20


@dataclass
class Case:
    """How one strategy is run in the matrix and what shows that it acts."""

    entry: object  # the experiment's strategy entry: settings under which its effect shows on tiny models
    check: Callable | None = None  # (runs, kind, result, run) -> None: its behaviour, beyond the common checks
    scenario: str = "class_incremental"
    differs_from_naive: bool = True  # its trained weights differ from naive's at the same seed


@dataclass
class Runs:
    """Runs of this module, each trained once, on demand: ``runs.get(kind, entry, scenario)`` -> (result, TrainingRun)."""

    root: object
    backbones: dict = field(default_factory=dict)
    done: dict = field(default_factory=dict)
    folders: int = 0

    def backbone(self, kind: str):
        if kind not in self.backbones:
            from conftest import build_tiny_bert, demo_words

            build = {"encoder": build_tiny_bert, "causal_lm": build_tiny_llama, "seq2seq": build_tiny_t5}[kind]
            self.backbones[kind] = build(self.root / f"backbone-{kind}", demo_words())
        return self.backbones[kind]

    def get(self, kind: str, entry, scenario: str = "class_incremental", tasks: int = 2):
        key = (kind, repr(entry), scenario, tasks)
        if key not in self.done:
            from generative_helpers import run_generative

            folder = self.root / f"run{self.folders}"
            folder.mkdir()
            self.folders += 1
            if kind == "encoder":
                write_demo_stream(folder, scenario, per_class=TRAIN_ROWS // 2, tasks=tasks)
                path = write_experiment(folder, self.backbone(kind), [entry], **TRAINING[kind])
            else:
                path = write_generative_experiment(folder, self.backbone(kind), kind, [entry], tasks=tasks, scenario=scenario, **TRAINING[kind])
            self.done[key] = run_generative(path)
        return self.done[key]


def plugin_of(run, cls_name: str):
    (plugin,) = [p for p in run.plugins if type(p).__name__ == cls_name]
    return plugin


# -- behaviour checks ---------------------------------------------------------------------------------------------


def learns(runs, kind, result, run):
    from cl_harness.runner.run import build_model

    task = run.plan.tasks[-1]
    x, labels = task.train_inputs, torch.full((len(task.train_inputs),), task.index)
    targets = task.train_targets if kind == "encoder" else x[:, 2]  # a language model's targets are its answer ids

    def loss(model) -> float:
        with torch.no_grad():
            return float(model.criterion()(model.eval()(x, labels), targets))

    assert loss(run.model) < 0.5 * loss(build_model(run.plan, torch.device("cpu")))  # the last task was learned


def trains_rows(expected_rows: int):
    def check(runs, kind, result, run):
        assert run.meter.examples == expected_rows * run.plan.training.epochs

    return check


def untrained(runs, kind, result, run):
    assert result.matrix == [result.initial] and run.meter.examples == 0


def scores_with_demonstrations(runs, kind, result, run):
    from cl_harness.evaluation.rank_classification import label_scores

    untrained(runs, kind, result, run)
    task = run.plan.tasks[0]
    assert run.env.demonstrations and task.in_context_inputs.shape[0] == task.test_inputs.shape[0]
    shown, plain = task.in_context_inputs[:4], task.test_inputs[:4]
    assert shown[:, 1].sum() > plain[:, 1].sum()  # longer prompts: the demonstrations come first
    assert not torch.allclose(label_scores(run.model, shown, task.candidates), label_scores(run.model, plain, task.candidates))


def ewc_pulls_toward_the_task_1_weights(runs, kind, result, run):
    from cl_harness.strategies.common.importance import ewc_penalty

    plugin = plugin_of(run, "EWC")
    assert sorted(plugin.importances) == [0]  # a Fisher after task 1; none after the last task (no later task pays it)
    assert sum(float(v.data.sum()) for v in plugin.importances[0].values()) > 0
    _, naive = runs.get(kind, "naive")
    moved = [float(ewc_penalty(r.model, plugin.saved_params[0], plugin.importances[0])) for r in (run, naive)]
    assert 0 < moved[0] < 0.5 * moved[1]  # same task 1 (same seed): EWC moved far less where the Fisher is large


def replay_keeps_every_tasks_classes(runs, kind, result, run):
    plugin = plugin_of(run, "ReplayPlugin")
    groups = plugin.storage_policy.buffer_groups
    assert sorted(groups) == [(0, 0), (0, 1), (1, 0), (1, 1)]  # (task, local class): task 2 did not replace task 1
    assert all(len(g.buffer) > 0 for g in groups.values()) and len(plugin.storage_policy.buffer) <= 20


def der_replays_stored_logits_with_two_samples(runs, kind, result, run):
    plugin = plugin_of(run, "DERPlugin")
    logits = plugin.buffer.fields["logits"]
    assert len(plugin.buffer) == 20 and plugin.buffer.seen == 2 * TRAIN_ROWS * run.plan.training.epochs
    assert logits.dim() == (2 if kind == "encoder" else 3) and bool(logits.abs().sum() > 0)
    drawn = []
    sample = plugin.buffer.sample
    plugin.buffer.sample = lambda size: drawn.append(size) or sample(size)
    strategy = run.strategy
    strategy.loss = torch.zeros(())
    plugin.before_backward(strategy)
    plugin.buffer.sample = sample
    assert len(drawn) == 2 and float(strategy.loss) > 0  # DER++: one sample for the logit term, another for the labels


def agem_projects_against_the_memory_gradient(runs, kind, result, run):
    plugin = plugin_of(run, "HarnessAGEMPlugin")
    assert [len(b) for b in plugin.buffers] == [10, 10]  # a memory per task, sampled per task
    strategy = run.strategy
    plugin.before_training_iteration(strategy)  # the reference gradient on a memory sample
    reference = plugin.reference_gradients
    offset = 0
    for p in strategy.model.parameters():
        if p.requires_grad:
            p.grad = -reference[offset : offset + p.numel()].view_as(p).clone()  # straight against the reference
        offset += p.numel()
    plugin.after_backward(strategy)
    projected = torch.cat([p.grad.flatten() if p.grad is not None else p.new_zeros(p.numel()) for p in strategy.model.parameters()])
    assert abs(float(projected @ reference)) < 1e-4 * float(reference @ reference)


def lwf_stays_closer_to_the_previous_model(runs, kind, result, run):
    plugin = plugin_of(run, "LearningWithoutForgetting")
    teacher = plugin.teacher
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    _, naive = runs.get(kind, "naive", "task_incremental")
    task = run.plan.tasks[1]
    x, labels = task.train_inputs[:16], torch.full((16,), task.index)

    def kl(model) -> float:
        model.eval()
        with torch.no_grad():
            return float(plugin.penalty(model, x, labels, model(x, labels)))

    # after task 2 the teacher is the final model itself: distil against the model after task 1, which both runs
    # shared (same seed, LwF trains task 1 as naive does) and which was LwF's teacher while task 2 trained
    plugin.teacher = plugin.first_teacher
    try:
        assert 0 < kl(run.model) < 0.7 * kl(naive.model)
    finally:
        plugin.teacher = teacher


class FirstTeacherKept:
    """LwF's after_training_exp, patched to keep its first teacher (the model after task 1) as ``first_teacher``."""

    def __enter__(self):
        from cl_harness.strategies.lwf import LearningWithoutForgetting

        self.cls, self.original = LearningWithoutForgetting, LearningWithoutForgetting.after_training_exp

        def keep(plugin, strategy, **kwargs):
            self.original(plugin, strategy, **kwargs)
            plugin.__dict__.setdefault("first_teacher", plugin.teacher)

        self.cls.after_training_exp = keep

    def __exit__(self, *exc):
        self.cls.after_training_exp = self.original


def adapters(count: int):
    def check(runs, kind, result, run):
        from cl_harness.models.lora import lora_layers

        layers = lora_layers(run.model)
        assert layers and all(len(layer.lora_a) == count for layer in layers)
        assert result.metrics["trainable_params"] < 0.5 * result.metrics["total_params"]

    return check


def o_lora_keeps_adapters_orthogonal(runs, kind, result, run):
    from cl_harness.models.lora import lora_layers

    adapters(2)(runs, kind, result, run)

    def overlap(model) -> float:
        layers = lora_layers(model)
        return sum(float((lay.lora_a[0] @ lay.lora_a[1].T).abs().sum() / (lay.lora_a[0].norm() * lay.lora_a[1].norm())) for lay in layers)

    _, inc = runs.get(kind, {"inc_lora": {"lora_rank": 4}})
    assert overlap(run.model) < 0.5 * overlap(inc.model)


CASES: dict[str, Case] = {
    "naive": Case("naive", learns, differs_from_naive=False),
    "joint": Case("joint", trains_rows(2 * TRAIN_ROWS)),
    "cumulative": Case("cumulative", trains_rows(3 * TRAIN_ROWS)),  # task 1, then tasks 1 and 2
    "zero_shot": Case("zero_shot", untrained, differs_from_naive=False),
    "in_context": Case({"in_context": {"shots": 1}}, scores_with_demonstrations, differs_from_naive=False),
    "ewc": Case({"ewc": {"ewc_lambda": 1.0e6}}, ewc_pulls_toward_the_task_1_weights),
    "replay": Case({"replay": {"mem_size": 20, "policy": "class_balanced"}}, replay_keeps_every_tasks_classes, "task_incremental"),
    "der": Case({"der": {"mem_size": 20}}, der_replays_stored_logits_with_two_samples),
    "agem": Case({"agem": {"patterns_per_experience": 10, "sample_size": 8}}, agem_projects_against_the_memory_gradient),
    "lwf": Case({"lwf": {"alpha": 5.0}}, lwf_stays_closer_to_the_previous_model, "task_incremental"),
    "seq_lora": Case({"seq_lora": {"lora_rank": 4}}, adapters(1)),
    "inc_lora": Case({"inc_lora": {"lora_rank": 4}}, adapters(2)),
    "o_lora": Case({"o_lora": {"lora_rank": 4, "orthogonal_lambda": 1.0}}, o_lora_keeps_adapters_orthogonal),
}
# Encoder-only strategies: their behaviour tests are in test_regularization.py and test_rehearsal.py; here they run
# through the same tester and must change training.
ENCODER_ONLY_ENTRIES = {"si": {"si_lambda": 1.0e4}, "mas": {"lambda_reg": 100.0}, "rwalk": {"ewc_lambda": 1.0e3}, "lfl": {"lambda_e": 1.0e3}}


def case_of(name: str) -> Case:
    if name in CASES:
        return CASES[name]
    return Case({name: ENCODER_ONLY_ENTRIES[name]} if name in ENCODER_ONLY_ENTRIES else name)


MATRIX = [(info.name, kind) for info in REGISTRY for kind in KINDS if kind in info.backbone_kinds]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Runs:
    return Runs(tmp_path_factory.mktemp("matrix"))


def test_every_strategy_declares_a_case_or_is_encoder_only():
    """A strategy that runs on a language model must show its behaviour there: a new one needs a Case above."""
    generative = [info.name for info in REGISTRY if set(info.backbone_kinds) - {"encoder"}]
    assert sorted(set(generative) - set(CASES)) == []


@pytest.mark.parametrize(("name", "kind"), MATRIX, ids=[f"{n}-{k}" for n, k in MATRIX])
def test_strategy_acts_on_each_backbone_kind_it_declares(name, kind, runs):
    info, case = REGISTRY.get(name), case_of(name)
    scenario = case.scenario if case.scenario in info.scenarios else info.scenarios[0]
    with FirstTeacherKept():
        result, run = runs.get(kind, case.entry, scenario)
    assert result.status == "FINISHED", result.error
    one_row = info.train_data in ("joint", "none")
    assert len(result.matrix) == (1 if one_row else 2) and all(0.0 <= v <= 1.0 for row in result.matrix for v in row)
    summary = {"acc", "bwt", "fwt", "forgetting", "forgetting_last", "learning_acc"}
    assert (set(result.metrics) & summary == {"acc"}) if one_row else (set(result.metrics) >= summary)
    assert result.metrics["trainable_params"] > 0 and result.metrics["peak_memory_mb"] > 0
    if case.differs_from_naive:
        _, naive = runs.get(kind, "naive", scenario)
        weights, naive_weights = run.model.state_dict(), naive.model.state_dict()
        shared = [k for k in weights if k in naive_weights and weights[k].shape == naive_weights[k].shape]
        assert any(not torch.equal(weights[k], naive_weights[k]) for k in shared) or set(weights) != set(naive_weights)
    if case.check is not None:
        case.check(runs, kind, result, run)
