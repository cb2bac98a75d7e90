"""Instruction tasks on a generative backbone: the strategy's loop trains on the answer-only LM loss; rank classification scores.

Prompted classification as in T0 (Sanh et al., 2022, "Multitask Prompted Training Enables Zero-Shot Task
Generalization"): the column holds the accuracy of ranking the label texts by log-likelihood, and a task that asks
for it adds ``em/<task>``, the exact match of the freely generated answer.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import Tensor

from cl_harness.evaluation.rank_classification import exact_match, rank_classification_hits
from cl_harness.tasks.registry import TaskKindInfo

NAME = "instruction"
EM_PREFIX = "em"  # extra per-task metric: em/<task> (tracking.schema.EM_PREFIX)


@dataclass
class InstructionResources:
    """What scoring an instruction task reads: the tokenizer (exact match decodes)."""

    tokenizer: Any


def score(model, task, env, on_batch) -> tuple[float, dict[str, float], Tensor]:
    """Rank-classification accuracy on the test prompts and which examples were right ``(n,)``, plus exact match where
    the task asks for it."""
    resources: InstructionResources = env.resources[NAME]
    inputs = task.in_context_inputs if env.demonstrations else task.test_inputs  # (n_test, 3, length)
    hits = rank_classification_hits(
        model, inputs, task.test_targets, task.candidates, task.candidate_units, env.eval_batch_size, env.device, on_batch=on_batch,
    )
    value = int(hits.sum()) / len(hits) if len(hits) else float("nan")
    extra = {}
    if task.exact_match:
        local = [task.candidate_units.tolist().index(int(u)) for u in task.test_targets]
        extra[EM_PREFIX] = exact_match(model, resources.tokenizer, inputs, task.label_texts, local, env.device, task.candidates.shape[1])
    return value, extra, hits


INFO = TaskKindInfo(
    name=NAME,
    summary="labelled texts as prompts to a causal or seq2seq LM; answer-only LM loss; the column holds rank-classification accuracy",
    column_metric="accuracy",  # rank-classification accuracy
    score=score,
)
