"""Framework plugins every run gets: a progress bar, a guard against non-finite losses and the meter of a strategy's
own loss terms."""

from __future__ import annotations

import sys
import time

import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from cl_harness.errors import TrainingError
from cl_harness.tracking import schema


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
        self.bar = tqdm(total=total, desc=f"{self.describe} · train {task}", unit="batch", leave=False, disable=False)

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


ACTING_SHARE = 0.01  # the share a raised strength is estimated for


def strength_hint(spec, shares: dict[int, float] | None = None) -> str | None:
    """What to raise when the strategy is inert: each plugin's strength parameter (``StrategyInfo.strength``), its value, the
    values that acted on MiniLM, and (from the largest observed share s > 0, terms linear in it) the value at which its
    terms would reach ACTING_SHARE of the loss: ``value * a / (1 - a) * (1 - s) / s``, a floor as the terms shrink when they act."""
    observed = max((s for i, s in (shares or {}).items() if i > 0), default=0.0)
    parts = []
    for plugin in spec.plugins:
        if plugin.info is None or plugin.info.strength is None:
            continue
        name, acted = plugin.info.strength
        value = getattr(plugin.config, name)
        text = f"raise {plugin.name}'s {name} (now {value:g}" + (f"; {acted}" if acted else "")
        if observed > 0 and value > 0:
            text += f"; its terms reach {ACTING_SHARE:.0%} of the loss from about {value * ACTING_SHARE / (1 - ACTING_SHARE) * (1 - observed) / observed:.0e} on"
        elif shares and observed == 0:
            text += "; its terms were below the loss's float32 resolution, so by orders of magnitude"
        parts.append(text + ")")
    return "; ".join(parts) or None


class AddedLossShare(SupervisedPlugin):
    """The share of the strategy's own terms in the training loss, per task, logged as ``penalty_share/<task>``; a run whose
    terms stay below schema.NEGLIGIBLE_SHARE on every task after the first gets the ``inert`` tag and a warning.

    Placed after the strategy's plugins: at ``before_backward`` the loss holds the base criterion plus every term they
    added; the base criterion is recomputed on the step's outputs (no forward pass). Shares are sums over the task's
    steps, ``sum |terms| / (sum |criterion| + sum |terms|)``, summed on the device and read once per task.
    """

    def __init__(self, spec, task_names: list[str], logger=None) -> None:
        super().__init__()
        self.spec = spec  # the run's StrategySpec
        self.task_names = task_names
        self.logger = logger
        self.hint = strength_hint(spec)
        self.sums: Tensor | None = None  # (2,): summed |terms| and |criterion| of the current task
        self.shares: dict[int, float] = {}  # experience index -> share

    def before_training_exp(self, strategy, **kwargs):
        self.sums = None

    def before_backward(self, strategy, **kwargs):
        with torch.no_grad():
            base = strategy.criterion().detach().float().sum()
            terms = (strategy.loss.detach().float().sum() - base).abs()
            pair = torch.stack([terms, base.abs()])  # (2,)
            self.sums = pair if self.sums is None else self.sums + pair

    def trained_as_naive(self) -> None:
        """The current task's epochs were taken over from a naive run (a forked prefix): none of the strategy's terms."""
        self.sums = torch.zeros(2)

    def after_training_exp(self, strategy, **kwargs):
        if self.sums is None:  # trained outside the loop (an mlm task)
            return
        terms, base = self.sums.tolist()
        index = strategy.experience.current_experience
        self.shares[index] = terms / (terms + base) if terms + base > 0 else 0.0
        if self.logger is not None and (self.hint or any(self.shares.values())):
            self.logger.log_step(index + 1, {schema.penalty_share_metric(self.task_names[index]): self.shares[index]})
        if index == len(self.task_names) - 1:
            self.finish()

    def inert(self) -> str | None:
        """Why the strategy's terms did nothing, or None (also when nothing was measured after the first task)."""
        later = [s for i, s in self.shares.items() if i > 0]
        if not later or max(later) >= schema.NEGLIGIBLE_SHARE or not (self.hint or any(later)):
            return None
        hint = strength_hint(self.spec, self.shares)
        return (f"{self.spec.label}'s loss terms stayed below {schema.NEGLIGIBLE_SHARE:g} of the training loss on every task after the "
                f"first (at most {max(later):.1e}{': lost in rounding' if max(later) == 0 else ''}): likely too weak to change training" + (f"; {hint}" if hint else ""))

    def finish(self) -> None:
        """The run's largest share after the first task (final metric), and the inert tag and warning where it applies."""
        later = [s for i, s in self.shares.items() if i > 0]
        reason = self.inert()
        if reason:
            print(f"warning: {reason}", file=sys.stderr, flush=True)
        if self.logger is not None and later and (self.hint or any(later)):
            self.logger.log_final({schema.PENALTY_SHARE_METRIC: max(later)})
            weak = max(later) < schema.NEGLIGIBLE_SHARE  # what to raise, only where the terms did not act
            tags = {schema.INERT_TAG: reason, schema.STRENGTH_HINT_TAG: strength_hint(self.spec, self.shares) if weak else None}
            self.logger.set_tags({key: value for key, value in tags.items() if value})


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
