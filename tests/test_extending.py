"""The two extension points of docs/extending.md, exercised from a test: a new strategy and a new task kind,
each registered here (not in the package) and shown to run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import pytest
import torch
from avalanche.core import SupervisedPlugin
from conftest import write_demo_stream, write_experiment

from cl_harness.config.loader import load_experiment
from cl_harness.evaluation.evaluator import length_sorted_batches
from cl_harness.grid.prepare import check_experiment, prepare_experiment
from cl_harness.runner.run import TrainingRun
from cl_harness.strategies import default_registry
from cl_harness.strategies.registry import BuildContext, StrategyInfo
from cl_harness.tasks import classification, default_kinds
from cl_harness.tasks.registry import TaskKindInfo


# --- a strategy: docs/extending.md, "Add a strategy" ---------------------------------------------------------


@dataclass
class L2SPConfig:
    """The weight of the pull toward the pretrained weights."""

    lam: float = field(default=0.01, metadata={"ge": 0.0, "help": "weight of lam * ||theta - theta_0||^2"})


class L2SP(SupervisedPlugin):
    """Adds ``lam * ||theta - theta_0||^2`` to the loss, ``theta_0`` the weights before the first task."""

    def __init__(self, lam: float) -> None:
        super().__init__()
        self.lam, self.start = lam, None

    def before_training(self, strategy, **kwargs):
        if self.start is None:
            self.start = {name: p.detach().clone() for name, p in strategy.model.named_parameters() if p.requires_grad}

    def before_backward(self, strategy, **kwargs):
        params = dict(strategy.model.named_parameters())
        strategy.loss += self.lam * sum(((params[name] - start) ** 2).sum() for name, start in self.start.items())


def build_l2_sp(config: L2SPConfig, context: BuildContext) -> list:
    return [L2SP(config.lam)]


L2_SP = StrategyInfo(
    name="l2_sp",
    config_cls=L2SPConfig,
    build=build_l2_sp,
    summary="pull every weight toward its pretrained value",
    paper="Li et al. 2018, Explicit Inductive Bias for Transfer Learning with Convolutional Networks (ICML)",
)


def prepared_with(tmp_path, tiny_bert, strategies: list, registry=None):
    write_demo_stream(tmp_path)
    path = write_experiment(tmp_path, tiny_bert, strategies, epochs=2)
    return prepare_experiment(check_experiment(load_experiment(path), registry), cache=None)


@pytest.mark.parametrize("kind", ["encoder", "causal_lm", "seq2seq"])
def test_a_strategy_registered_from_a_test_runs_on_every_backbone_kind(kind, tmp_path, tiny_bert, tiny_llama):
    """One file and its registry line: the docs' example strategy trains through the one loop on all three kinds and
    keeps the weights nearer the pretrained ones than naive does."""
    from generative_helpers import build_tiny_t5, write_generative_experiment

    from conftest import demo_words

    registry = default_registry()
    registry.register(L2_SP)
    strategies = ["naive", {"l2_sp": {"lam": 1.0}}]
    if kind == "encoder":
        prepared = prepared_with(tmp_path, tiny_bert, strategies, registry)
    else:
        backbone = tiny_llama if kind == "causal_lm" else build_tiny_t5(tmp_path / "t5", demo_words())
        path = write_generative_experiment(tmp_path, backbone, kind, strategies, tasks=2, epochs=2, batch_size=4, lr=3e-3)
        prepared = prepare_experiment(check_experiment(load_experiment(path), registry))
    moved = {}
    for planned in prepared.runs:
        run = TrainingRun(prepared.run_plan(planned), show_progress=False)
        result = run.execute()
        assert result.status == "FINISHED", result.error
        pretrained = {n: p for n, p in run.plan.model_factory().named_parameters() if n.startswith(("encoder.", "lm."))}  # not the random heads
        moved[planned.strategy.label] = sum(float(((p - pretrained[n]) ** 2).sum()) for n, p in run.model.named_parameters() if n in pretrained)
    assert 0 < moved["l2_sp"] < 0.5 * moved["naive"]


def test_a_strategy_name_registers_once():
    registry = default_registry()
    registry.register(L2_SP)
    with pytest.raises(ValueError, match="l2_sp"):
        registry.register(L2_SP)


# --- a task kind: docs/extending.md, "Add a task kind" -------------------------------------------------------


@torch.inference_mode()
def macro_f1(model, task, env, on_batch) -> tuple[float, dict[str, float]]:
    """Macro-averaged F1 over the task's classes; the accuracy goes along as an extra metric."""
    model.eval()
    predictions = torch.empty_like(task.test_targets)
    for index in length_sorted_batches(task.test_inputs, env.eval_batch_size):
        predictions[index] = model(task.test_inputs[index].to(env.device), task.index).argmax(dim=1).cpu()
        on_batch(len(index))
    model.train()
    return f1_of(predictions, task.test_targets), {"accuracy": float((predictions == task.test_targets).float().mean())}


def f1_of(predictions: torch.Tensor, targets: torch.Tensor) -> float:
    scores = []
    for label in targets.unique():
        tp = int(((predictions == label) & (targets == label)).sum())
        fp = int(((predictions == label) & (targets != label)).sum())
        fn = int(((predictions != label) & (targets == label)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return sum(scores) / len(scores)


F1_CLASSIFICATION = TaskKindInfo(
    name="f1_classification",
    summary="labelled texts trained like classification, scored by macro-F1",
    column_metric="macro_f1",
    score=macro_f1,
)


def test_a_task_kind_registered_from_a_test_fills_its_matrix_column(tmp_path, tiny_bert):
    kinds = default_kinds()
    kinds.register(F1_CLASSIFICATION)
    prepared = prepared_with(tmp_path, tiny_bert, ["naive"])
    plan = prepared.run_plan(prepared.runs[0])
    first, second = plan.tasks
    plan = dataclasses.replace(plan, kinds=kinds, tasks=[first, dataclasses.replace(second, kind="f1_classification")])

    run = TrainingRun(plan, show_progress=False)
    result = run.execute()

    assert result.status == "FINISHED", result.error
    assert result.column_metrics == ["accuracy", "macro_f1"]
    run.model.eval()
    with torch.inference_mode():
        predictions = run.model(second.test_inputs, second.index).argmax(dim=1)
    assert result.matrix[-1][1] == pytest.approx(f1_of(predictions, second.test_targets))
    accuracy = float((predictions == second.test_targets).float().mean())
    assert run.evaluate.extra == {"accuracy/t2": pytest.approx(accuracy)}, "a kind's extra metric is named <prefix>/<task>"


def test_a_task_kind_name_registers_once():
    kinds = default_kinds()
    with pytest.raises(ValueError, match="classification"):
        kinds.register(classification.INFO)
    with pytest.raises(KeyError, match="registered: classification, mlm, instruction"):
        kinds.get("regression")
