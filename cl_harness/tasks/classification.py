"""Classification tasks: labelled texts, trained by the strategy's Avalanche loop, scored by accuracy."""

from __future__ import annotations

from torch import Tensor

from cl_harness.evaluation.evaluator import task_correct
from cl_harness.tasks.registry import TaskKindInfo


def score(model, task, env, on_batch) -> tuple[float, dict[str, float], Tensor]:
    """Accuracy on the task's scored split, and which examples were right: ``(n,)`` booleans (for the negative flip rate)."""
    hits = task_correct(model, task.test_inputs, task.test_targets, task.index, env.eval_batch_size, env.device, on_batch)  # (n,)
    return (int(hits.sum()) / len(hits) if len(hits) else float("nan")), {}, hits


INFO = TaskKindInfo(
    name="classification",
    summary="labelled texts; the strategy's loop trains on them; the column holds test accuracy",
    column_metric="accuracy",
    score=score,
)
