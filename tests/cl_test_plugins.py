"""Test-only Avalanche plugins, named in experiment YAML by dotted path (``cl_test_plugins:Name``)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from avalanche.core import SupervisedPlugin


def claim(marker_file: str) -> bool:
    """Create ``marker_file`` if no process has: exactly one caller across processes gets True."""
    try:
        os.close(os.open(marker_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


class PauseBeforeTask(SupervisedPlugin):
    """Before every task after the first, wait while ``flag_file`` exists (at most ``seconds``), so a test can interrupt there.

    While it waits, ``<flag_file>.paused`` exists: the run has logged the step before and is inside the pause.
    """

    def __init__(self, flag_file: str, seconds: float = 60.0) -> None:
        super().__init__()
        self.flag_file = flag_file
        self.seconds = seconds

    def before_training_exp(self, strategy, **kwargs):
        deadline = time.monotonic() + self.seconds
        if strategy.clock.train_exp_counter >= 1 and Path(self.flag_file).exists():
            Path(self.flag_file + ".paused").touch()
        while strategy.clock.train_exp_counter >= 1 and Path(self.flag_file).exists() and time.monotonic() < deadline:
            time.sleep(0.05)


class NanLossAtTask(SupervisedPlugin):
    """Turn the loss into NaN from the given task on (0-based), to test the non-finite-loss guard."""

    def __init__(self, task: int = 1) -> None:
        super().__init__()
        self.task = task

    def before_backward(self, strategy, **kwargs):
        if strategy.clock.train_exp_counter >= self.task:
            strategy.loss = strategy.loss * float("nan")


class LoaderSpy(SupervisedPlugin):
    """Record the training loader's type and each minibatch's token lengths."""

    def __init__(self) -> None:
        super().__init__()
        self.loader_types: list[str] = []
        self.batch_lengths: list[list[int]] = []

    def before_training_epoch(self, strategy, **kwargs):
        self.loader_types.append(type(strategy.dataloader).__name__)

    def after_training_iteration(self, strategy, **kwargs):
        self.batch_lengths.append(strategy.mb_x[:, 1].sum(dim=1).tolist())


class KillProcessAtTask(SupervisedPlugin):
    """SIGKILL this process before training task ``task`` (0-based): once per ``marker_file`` when given, else every time."""

    def __init__(self, task: int = 1, marker_file: str | None = None) -> None:
        super().__init__()
        self.task = task
        self.marker_file = marker_file

    def before_training_exp(self, strategy, **kwargs):
        if strategy.clock.train_exp_counter != self.task:
            return
        if self.marker_file is not None and not claim(self.marker_file):
            return  # another process died here already; the retry trains on
        os.kill(os.getpid(), signal.SIGKILL)


class RaiseAtTask(SupervisedPlugin):
    """Raise an ordinary error before training task ``task`` (0-based), appending a line to ``count_file`` each time."""

    def __init__(self, count_file: str, task: int = 1) -> None:
        super().__init__()
        self.count_file = count_file
        self.task = task

    def before_training_exp(self, strategy, **kwargs):
        if strategy.clock.train_exp_counter == self.task:
            with open(self.count_file, "a") as file:
                file.write("attempt\n")
            raise RuntimeError("a bug in the strategy")


class StoreOutageAtTask(SupervisedPlugin):
    """Raise the error an unreachable tracking store gives, before training task ``task`` (0-based), once per ``marker_file``."""

    def __init__(self, marker_file: str, task: int = 1) -> None:
        super().__init__()
        self.marker_file = marker_file
        self.task = task

    def before_training_exp(self, strategy, **kwargs):
        from mlflow.exceptions import MlflowException

        if strategy.clock.train_exp_counter != self.task:
            return
        if not claim(self.marker_file):
            return  # the store is back
        raise MlflowException("API request to the tracking server failed: connection refused")


class RecordProcess(SupervisedPlugin):
    """Append this process's id to ``pid_file`` when a run starts training, to tell which process trained it."""

    def __init__(self, pid_file: str) -> None:
        super().__init__()
        self.pid_file = pid_file

    def before_training(self, strategy, **kwargs):
        if strategy.clock.train_exp_counter == 0:
            with open(self.pid_file, "a") as file:
                file.write(f"{os.getpid()}\n")
