"""Representation forgetting by linear probing: how well a linear classifier fitted on a model's frozen features still
separates a task's classes, whatever its own head does (Tao et al. 2023, "Can BERT Refrain from Forgetting on Sequential
Tasks? A Probing Study", ICLR; Zheng et al. 2024, "Learn or Recall? Revisiting Incremental Learning with Pre-trained
Language Models", ACL).

The probe, one per task: multinomial logistic regression over the task's training classes, on the features standardised
with the training split's mean and standard deviation, weights starting at zero, fitted by full-batch L-BFGS in float64
for at most ``PROBE_MAX_ITER`` iterations on the mean cross-entropy plus ``PROBE_L2 / 2 * ||W||^2`` (bias not
penalised). It draws nothing at random, so it neither needs a seed nor moves the run's random stream.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cl_harness.evaluation.evaluator import length_sorted_batches
from cl_harness.models.lora import routed

PROBE_L2 = 1e-2
PROBE_MAX_ITER = 100


@torch.no_grad()
def features(model: nn.Module, inputs: Tensor, task_index: int, batch_size: int, device) -> Tensor:
    """The model's pooled features (``encode``) of ``inputs`` ``(n, 3, length)`` in eval mode: ``(n, hidden)`` float32 on
    the CPU, in input order. A model that routes examples to per-task adapters routes them all to ``task_index``'s."""
    was_training = model.training
    model.eval()
    parts, rows = [], []
    with model.scoring() if hasattr(model, "scoring") else nullcontext():
        for index in length_sorted_batches(inputs, batch_size):
            x = inputs[index].to(device)  # (batch, 3, length)
            route = torch.full((len(index),), task_index, device=device)
            with routed(model.encoder, route) if getattr(model, "route_by_task", False) else nullcontext():
                parts.append(model.encode(x, chunked=False).float().cpu())  # (batch, hidden)
            rows.append(index)
    model.train(was_training)
    if not parts:
        return torch.zeros((0, 0))
    out = torch.empty((len(inputs), parts[0].shape[1]))
    out[torch.cat(rows)] = torch.cat(parts)
    return out


@dataclass(frozen=True)
class Probe:
    """A fitted linear probe: standardisation, weights ``(hidden, classes)``, bias ``(classes,)`` and the class labels."""

    mean: Tensor
    std: Tensor
    weight: Tensor
    bias: Tensor
    classes: Tensor

    def predict(self, x: Tensor) -> Tensor:
        """Predicted labels of features ``(n, hidden)``: ``(n,)``."""
        logits = ((x.double() - self.mean) / self.std) @ self.weight + self.bias  # (n, classes)
        return self.classes[logits.argmax(dim=1)]


def fit_probe(x: Tensor, y: Tensor, l2: float = PROBE_L2, max_iter: int = PROBE_MAX_ITER) -> Probe:
    """The probe of training features ``x`` ``(n, hidden)`` with labels ``y`` ``(n,)`` (see the module's recipe)."""
    classes = torch.unique(y)  # sorted
    target = torch.searchsorted(classes, y)  # (n,)
    mean = x.double().mean(dim=0)
    std = x.double().std(dim=0, unbiased=False).clamp_min(1e-6)
    z = (x.double() - mean) / std  # (n, hidden)
    weight = torch.zeros((x.shape[1], len(classes)), dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(z @ weight + bias, target) + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return Probe(mean, std, weight.detach(), bias.detach(), classes)


def probe_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor) -> float:
    """Test accuracy of the probe fitted on the training features; NaN without test or training examples."""
    if len(test_y) == 0 or len(train_y) == 0:
        return float("nan")
    return float((fit_probe(train_x, train_y).predict(test_x) == test_y).double().mean())


def probe_summary(rows: dict[int, list[float]], n_tasks: int) -> dict[str, float]:
    """``acc``, ``bwt`` and ``forgetting`` of a probing matrix (``rows``: step -> row, NaN where a task was not probed) as
    ``evaluation/metrics.py`` defines them, over the tasks probed at the last step; forgetting's best accuracy is taken
    over the steps since the task was trained (earlier cells are not probed). ``acc`` alone when a step between is missing
    (joint training probes after its one step only); nothing without the last step."""
    final = np.array(rows.get(n_tasks, []), dtype=np.float64)  # (T,)
    columns = [j for j, value in enumerate(final) if not np.isnan(value)]
    if not columns:
        return {}
    out = {"acc": float(final[columns].mean())}
    if any(step not in rows for step in range(1, n_tasks)):
        return out
    matrix = np.array([rows[step] for step in range(1, n_tasks + 1)], dtype=np.float64)  # (T, T): row i after task i + 1
    earlier = [j for j in columns if j < n_tasks - 1]
    out["bwt"] = float(np.mean([final[j] - matrix[j, j] for j in earlier])) if earlier else 0.0
    out["forgetting"] = float(np.mean([matrix[j : n_tasks - 1, j].max() - final[j] for j in earlier])) if earlier else 0.0
    return out
