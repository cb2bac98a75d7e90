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
class FrozenEncoderConfig:
    """Train only the heads: the encoder is frozen before the first task."""

    keep_embeddings_trainable: bool = field(default=False, metadata={"help": "leave the embedding table trainable"})


class FrozenEncoder(SupervisedPlugin):
    """Freezes the encoder's parameters before training; the heads keep learning."""

    def __init__(self, keep_embeddings_trainable: bool) -> None:
        super().__init__()
        self.keep_embeddings_trainable = keep_embeddings_trainable

    def before_training_exp(self, strategy, **kwargs):
        embeddings = {id(p) for p in strategy.model.encoder.get_input_embeddings().parameters()}
        for param in strategy.model.encoder.parameters():
            param.requires_grad_(self.keep_embeddings_trainable and id(param) in embeddings)


def build_frozen_encoder(config: FrozenEncoderConfig, context: BuildContext) -> list:
    return [FrozenEncoder(config.keep_embeddings_trainable)]


FROZEN_ENCODER = StrategyInfo(
    name="frozen_encoder",
    config_cls=FrozenEncoderConfig,
    build=build_frozen_encoder,
    summary="linear probing: the encoder is frozen, only the heads train",
    paper="",
)


def prepared_with(tmp_path, tiny_bert, strategies: list, registry=None):
    write_demo_stream(tmp_path)
    path = write_experiment(tmp_path, tiny_bert, strategies, epochs=2)
    return prepare_experiment(check_experiment(load_experiment(path), registry), cache=None)


def test_a_strategy_registered_from_a_test_trains_only_the_heads(tmp_path, tiny_bert):
    registry = default_registry()
    registry.register(FROZEN_ENCODER)
    prepared = prepared_with(tmp_path, tiny_bert, ["naive", "frozen_encoder"], registry)
    assert [p.strategy.label for p in prepared.runs] == ["naive", "frozen_encoder"]

    changed = {}
    for planned in prepared.runs:
        run = TrainingRun(prepared.run_plan(planned), show_progress=False)
        torch.manual_seed(0)
        before = {name: p.detach().clone() for name, p in run.plan.model_factory().named_parameters()}
        result = run.execute()
        assert result.status == "FINISHED", result.error
        after = dict(run.model.named_parameters())
        changed[planned.strategy.label] = {name for name in before if not torch.equal(before[name], after[name].detach().cpu())}
    assert any(name.startswith("heads") for name in changed["frozen_encoder"]), "the heads learn"
    assert not any(name.startswith("encoder") for name in changed["frozen_encoder"]), "the encoder stays as loaded"
    assert any(name.startswith("encoder") for name in changed["naive"]), "without the plugin the encoder trains"


def test_a_strategy_name_registers_once():
    registry = default_registry()
    registry.register(FROZEN_ENCODER)
    with pytest.raises(ValueError, match="frozen_encoder"):
        registry.register(FROZEN_ENCODER)


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
    train=classification.train,  # the strategy's loop, as for classification
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
