"""A shared prefix: a run's state at the point where its strategy would start task 1's after-training hooks, saved once
and forked into every run of the grid that trains task 1 exactly as naive does (``StrategyInfo.naive_prefix_tasks``).

Avalanche's ``train`` runs ``_before_training_exp``, then ``_train_exp`` (the epochs), then ``_after_training_exp``
(the hooks: Fisher, memory, teacher). The prefix run (naive) saves its state when ``_train_exp`` returns; a forked
run builds its own strategy, runs its own ``_before_training_exp``, puts the saved state in place instead of the
epochs, then runs its own hooks: they see the model, optimizer, gradients, RNG and clock an unshared run would
give them. The file is a run checkpoint (``runner/checkpoint.py``: written atomically, sha256 beside it); the
step-0 scores are in the folder's ``state.json``. docs/explanation/prefix-sharing.md says more.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from cl_harness.runner.checkpoint import checkpoint_payload, load_model_state, restore_rng_states, serialize, write_verified

PREFIX_TASKS = 1  # tasks a prefix trains


@dataclass(frozen=True)
class SharedPrefix:
    """A run's link to its grid's shared prefix in ``folder``: ``save``: train task 1 and save it there; else start from it.

    ``saved``: the prefix's checkpoint when the caller has already read and checked it (else the run loads it).
    """

    folder: Path
    save: bool = False
    saved: dict | None = field(default=None, compare=False, repr=False)


@contextmanager
def at_training_end(strategy, action: Callable[[], None], train: bool = True):
    """Call ``action()`` where the strategy's next ``train`` ends its epochs, before the after-training hooks.

    ``train=False`` skips the epochs (a fork: ``action`` puts their outcome in place).
    """
    epochs = strategy._train_exp

    def train_exp(*args, **kwargs):
        if train:
            epochs(*args, **kwargs)
        action()

    strategy._train_exp = train_exp  # the instance attribute hides the template's method until the block ends
    try:
        yield
    finally:
        del strategy._train_exp


def save_prefix(folder: Path, strategy, meter, loss_scale=None) -> float:
    """The state after task 1's epochs: a checkpoint plus the gradients left in place and the training meter.

    Returns the epochs' seconds (what each run that forks the prefix does not spend).
    """
    seconds = meter.task_elapsed
    payload = checkpoint_payload(PREFIX_TASKS, strategy.model, strategy.optimizer, [], strategy.clock, loss_scale)
    payload["grads"] = {name: p.grad for name, p in strategy.model.named_parameters() if p.grad is not None}
    payload["meter"] = {"examples": meter.examples, "seconds": seconds}
    write_verified(folder, PREFIX_TASKS, serialize(folder, payload))
    return seconds


def fork_prefix(payload: dict, strategy, meter, loss_scale=None) -> None:
    """Put a saved prefix in place of task 1's epochs; the RNG last, as it was when the epochs ended."""
    model = strategy.model
    load_model_state(model, payload["model"])
    strategy.optimizer.load_state_dict(payload["optimizer"])
    grads = payload["grads"]
    for name, parameter in model.named_parameters():
        parameter.grad = grads[name].to(parameter.device) if name in grads else None
    strategy.clock.__dict__.update(payload["clock"])
    if loss_scale is not None and payload.get("loss_scale"):
        loss_scale.load_state_dict(payload["loss_scale"])
    meter.take_over(**payload["meter"])
    restore_rng_states(payload["rng"])
