"""Framework plugins every run gets: a progress bar and a guard against non-finite losses."""

from __future__ import annotations

import time

import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cl_harness.errors import TrainingError


class ProgressBar(SupervisedPlugin):
    """A tqdm bar per task over all its training minibatches: the run's position, the task's name and position, and
    the running mean of the loss since the task began, shown every ``loss_every`` batches and at the task's end.

    Losses are summed on the device; reading the sum waits for the device, so it happens only every ``loss_every`` batches.
    """

    def __init__(self, describe: str, enabled: bool = True, loss_every: int = 5, task_names: list[str] | None = None,
                 train_data: str = "current") -> None:
        super().__init__()
        self.describe = describe
        self.enabled = enabled
        self.loss_every = max(1, loss_every)
        self.task_names = task_names or []
        self.train_data = train_data
        self.bar = None
        self.loss_sum = None  # the summed detached losses of this task, on the device
        self.batches = 0

    def task_label(self, index: int) -> str:
        """``task 2/5: name`` (``tasks 1-2/5``, or ``all 5 tasks`` for cumulative and joint data)."""
        total = len(self.task_names)
        name = self.task_names[index] if index < total else str(index + 1)
        if self.train_data == "joint":
            return f"all {total} tasks (joint)"
        if self.train_data == "cumulative":
            return f"tasks 1-{index + 1}/{total} (cumulative): {name}"
        return f"task {index + 1}/{total}: {name}" if total else f"task {index + 1}"

    def before_training_exp(self, strategy, **kwargs):
        self.loss_sum, self.batches = None, 0
        if not self.enabled:
            return
        total = strategy.train_epochs * len(strategy.dataloader)
        task = self.task_label(strategy.experience.current_experience)
        self.bar = tqdm(total=total, desc=f"{self.describe} · train {task}", unit="batch", leave=False)

    def after_training_iteration(self, strategy, **kwargs):
        if self.bar is None:
            return
        loss = strategy.loss.detach().float().sum()
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        self.batches += 1
        self.bar.update(1)
        if self.batches % self.loss_every == 0 or self.batches == 1:
            self.show_loss()

    def show_loss(self) -> None:
        """Put the running mean loss on the bar (reads the device)."""
        if self.bar is not None and self.batches:
            self.bar.set_postfix(loss=f"{float(self.loss_sum) / self.batches:.3f}", refresh=False)

    @property
    def mean_loss(self) -> float | None:
        """The running mean training loss of the current (or last) task, or None before its first batch."""
        return float(self.loss_sum) / self.batches if self.batches else None

    def after_training_exp(self, strategy, **kwargs):
        if self.bar is not None:
            self.show_loss()
            self.bar.refresh()
            self.bar.close()
            self.bar = None


class FiniteLossGuard(SupervisedPlugin):
    """Stop the run with a clear message when the loss becomes NaN or infinite.

    Losses are checked every step on the CPU; on an accelerator they are kept on the device and
    checked every ``check_every`` steps and at each epoch's end, so the loop never waits on them.
    """

    def __init__(self, strategy_label: str, task_names: list[str], check_every: int = 25) -> None:
        super().__init__()
        self.strategy_label = strategy_label
        self.task_names = task_names
        self.check_every = check_every
        self.steps = 0
        self.pending: list[Tensor] = []  # detached scalar losses not checked yet

    def before_training_exp(self, strategy, **kwargs):
        self.steps = 0
        self.pending = []

    def before_backward(self, strategy, **kwargs):
        self.steps += 1
        self.pending.append(strategy.loss.detach().float().sum())  # a scalar, whatever shape a plugin left the loss in
        if strategy.loss.device.type == "cpu" or len(self.pending) >= self.check_every:
            self.check(strategy)

    def after_training_epoch(self, strategy, **kwargs):
        self.check(strategy)

    def check(self, strategy) -> None:
        if not self.pending:
            return
        losses = torch.stack(self.pending)  # (pending,)
        first_step = self.steps - len(self.pending) + 1
        self.pending = []
        bad = (~torch.isfinite(losses)).nonzero().flatten()
        if len(bad):
            index = int(bad[0])
            task = self.task_names[strategy.experience.current_experience]
            raise TrainingError(
                f"non-finite loss ({float(losses[index])}) in strategy {self.strategy_label!r}, task {task!r}, "
                f"step {first_step + index} of epoch {strategy.clock.train_exp_epochs + 1}"
            )


class TrainingMeter(SupervisedPlugin):
    """Counts training examples (replayed ones included) and time spent training each task."""

    def __init__(self) -> None:
        super().__init__()
        self.examples = 0
        self.seconds = 0.0
        self.task_seconds = 0.0
        self._started = 0.0

    def before_training_exp(self, strategy, **kwargs):
        self._started = time.perf_counter()

    def after_training_iteration(self, strategy, **kwargs):
        self.examples += int(strategy.mb_x.shape[0])

    def after_training_exp(self, strategy, **kwargs):
        self.task_seconds = time.perf_counter() - self._started
        self.seconds += self.task_seconds

    @property
    def examples_per_second(self) -> float:
        return self.examples / self.seconds if self.seconds else 0.0

    @property
    def task_elapsed(self) -> float:
        """Seconds since the current task's training began."""
        return time.perf_counter() - self._started

    def take_over(self, examples: int, seconds: float) -> None:
        """Continue a task another run trained (a shared prefix): its examples counted, its seconds on this task's clock."""
        self.examples += examples
        self._started = time.perf_counter() - seconds


class RestoreOptimizerState(SupervisedPlugin):
    """Load a checkpoint's optimizer state once, after Avalanche's first ``make_optimizer`` (which resets it)."""

    def __init__(self, state: dict) -> None:
        super().__init__()
        self.state = state

    def before_training_exp(self, strategy, **kwargs):
        if self.state is not None:
            strategy.optimizer.load_state_dict(self.state)
            self.state = None


def length_bucketed_batches(lengths: Tensor, batch_size: int, chunk_batches: int = 50) -> list[list[int]]:
    """Random batches of similar length: shuffle, sort chunks of ``chunk_batches`` batches by length, shuffle batches.

    Each batch then pads only to lengths close to its own, while the order of batches (and which
    examples meet in a chunk) stays random from epoch to epoch.
    """
    order = torch.randperm(len(lengths))
    batches: list[list[int]] = []
    chunk = batch_size * chunk_batches
    for start in range(0, len(order), chunk):
        part = order[start : start + chunk]
        part = part[torch.argsort(lengths[part], descending=True, stable=True)]
        batches.extend(part[i : i + batch_size].tolist() for i in range(0, len(part), batch_size))
    shuffled = torch.randperm(len(batches)).tolist()
    return [batches[i] for i in shuffled]


class LengthBucketing(SupervisedPlugin):
    """Train on length-bucketed batches (``training.length_bucketing``), where the default loader would be used.

    A strategy that brings its own loader (replay's mixed batches, GDumb's memory) keeps it.
    """

    def before_training_exp(self, strategy, **kwargs):
        if type(strategy.dataloader).__name__ != "TaskBalancedDataLoader":
            return
        dataset = strategy.adapted_dataset
        lengths = torch.stack([dataset[i][0][1].sum() for i in range(len(dataset))])  # (n,)
        batches = length_bucketed_batches(lengths, strategy.train_mb_size)
        strategy.dataloader = DataLoader(dataset, batch_sampler=batches, collate_fn=getattr(dataset, "collate_fn", None))
