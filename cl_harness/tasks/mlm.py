"""Masked-LM tasks: unlabelled texts, trained task by task outside the Avalanche loop, scored by masked-token accuracy.

Masking as in BERT (Devlin et al. 2019); pseudo-perplexity as in Salazar et al. 2020 (ACL).
"""

from __future__ import annotations

import math
import time

import torch
from torch import Tensor

from cl_harness.errors import TrainingError
from cl_harness.evaluation.evaluator import masked_token_accuracy, pseudo_perplexity
from cl_harness.models.masked_lm import MaskedLMHead, MaskingSpec, masked_lm_loss
from cl_harness.tasks.registry import TaskKindInfo, TrainStep

NAME = "mlm"
PPPL_PREFIX = "pppl"  # extra per-task metric: pppl/<task>


def train_masked_lm(
    model, optimizer, inputs: Tensor, spec: MaskingSpec, epochs: int, batch_size: int, device, loss_scale=None
) -> float:
    """Train the trainable parameters (backbone as configured + MLM head) on one task's texts; returns the last loss.

    ``loss_scale`` (fp16: the run's DynamicLossScale) scales the loss for backward and unscales the gradients, or drops them on overflow.
    """
    model.train()
    loss = torch.zeros(())
    for _ in range(epochs):
        for index in torch.randperm(len(inputs)).split(batch_size):
            optimizer.zero_grad()
            loss = masked_lm_loss(model, inputs[index].to(device), spec)
            if not math.isfinite(float(loss.detach())):
                raise FloatingPointError(f"non-finite masked-LM loss ({float(loss)})")
            if loss_scale is None:
                loss.backward()
            else:
                loss_scale.scaled(loss).backward()
                loss_scale.unscale_or_skip(list(model.parameters()))
            optimizer.step()
    return float(loss.detach())


def train(step: TrainStep) -> None:
    """Masked-LM training of one task outside the Avalanche loop (strategy plugins do not act on it)."""
    env, task, meter = step.env, step.task, step.meter
    started = time.perf_counter()
    try:
        train_masked_lm(step.model, step.strategy.optimizer, task.train_inputs, env.resources[NAME], env.epochs,
                        env.batch_size, env.device, env.loss_scale)
    except FloatingPointError as exc:
        raise TrainingError(f"task {task.name!r}: {exc}") from None
    meter.task_seconds = time.perf_counter() - started
    meter.seconds += meter.task_seconds
    meter.examples += env.epochs * len(task.train_inputs)


def score(model, task, env, on_batch) -> tuple[float, dict[str, float]]:
    """Masked-token accuracy under a fixed (seeded) masking; pseudo-perplexity as an extra metric."""
    masking = env.resources[NAME]
    accuracy = masked_token_accuracy(model, task.test_inputs, masking, env.eval_batch_size, env.device, seed=task.index)
    ppl = pseudo_perplexity(model, task.test_inputs, masking, env.eval_batch_size, env.device)
    on_batch(len(task.test_targets))
    return accuracy, {PPPL_PREFIX: ppl}


def resources(tokenizer) -> MaskingSpec:
    """What masking needs from the tokenizer."""
    return MaskingSpec(tokenizer.mask_token_id, tuple(tokenizer.all_special_ids), len(tokenizer))


def prepare_model(model, masking: MaskingSpec) -> None:
    """An MLM head tied to the input embeddings (added before any adapters, so it ties to the plain table)."""
    model.mlm_head = MaskedLMHead(model.encoder.get_input_embeddings(), model.encoder.config.hidden_size)


def check(loaded, strategies, tokenizer) -> None:
    """Masked-LM tasks need a [MASK] token, a strategy that trains task by task, and no per-task modules."""
    mlm = [i for i, t in enumerate(loaded.stream.config.tasks) if t.type == NAME]
    if tokenizer.mask_token_id is None:
        raise loaded.stream.source.error(("tasks", mlm[0], "type"), "the backbone's tokenizer has no mask token for an mlm task")
    for index, spec in enumerate(strategies):
        if spec.train_data != "current" or spec.per_task_modules:
            raise loaded.source.error(
                ("strategies", index),
                f"strategy {spec.label!r} cannot train a stream with mlm tasks: they are trained task by task on the shared "
                "backbone (or its single adapter), outside joint/cumulative data and per-task adapters",
                hint="use full fine-tuning, a backbone.peft method or seq_lora, with any plugins",
            )


INFO = TaskKindInfo(
    name=NAME,
    summary="unlabelled texts; masked-LM training per task; the column holds masked-token accuracy, plus pppl/<task>",
    column_metric="masked_token_accuracy",
    train=train,
    score=score,
    labelled=False,
    resources=resources,
    prepare_model=prepare_model,
    check=check,
)
