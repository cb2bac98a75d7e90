"""Linear probing in a run (``training.probe``): the probing matrix beside the accuracy matrix (evaluation/probe.py)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np

from cl_harness.evaluation.probe import features, probe_accuracy, probe_summary
from cl_harness.runner.checkpoint import atomic_write_bytes
from cl_harness.tracking import schema


class LinearProbing:
    """Called after the run scores a step: a linear probe per labelled task on the model's frozen features, every task at
    step 0 (the untrained model), the tasks trained so far after each step. Draws nothing from the random stream.

    The rows live in the run's state (``state.json``) and, with a run folder, the features in ``probe_features.npz``
    beside it, so a resumed run ends with the whole probing matrix. ``finish`` logs ``probe_accuracy_matrix.json``,
    ``probe_features.npz`` (what every probe was fitted and scored on) and ``probe_acc``, ``probe_bwt``,
    ``probe_forgetting``."""

    def __init__(self, tasks: list, probed: list[bool], env, rows: dict[int, list[float]], folder: Path | None = None) -> None:
        self.tasks = tasks  # EncodedTask, in training order
        self.probed = probed  # per task: whether its kind has class labels to probe
        self.env = env  # the run's KindEnv
        self.rows = rows  # step -> probe accuracy per task (NaN: not probed); the run state's own dict
        self.file = folder / schema.PROBE_FEATURES_ARTIFACT if folder else None
        self.saved: dict[str, np.ndarray] = dict(np.load(self.file)) if self.file and self.file.is_file() and rows else {}

    def __call__(self, model, step: int) -> None:
        row = [math.nan] * len(self.tasks)
        for j, task in enumerate(self.tasks[: step or len(self.tasks)]):
            if not self.probed[j]:
                continue
            splits = {split: (features(model, inputs, task.index, self.env.eval_batch_size, self.env.device), targets)
                      for split, inputs, targets in (("train", task.train_inputs, task.train_targets),
                                                     ("test", task.test_inputs, task.test_targets))}
            row[j] = probe_accuracy(*splits["train"], *splits["test"])
            for split, (x, y) in splits.items():
                self.saved[schema.probe_features_key(step, task.name, split, "x")] = x.numpy()
                self.saved[schema.probe_features_key(step, task.name, split, "y")] = y.numpy()
        self.rows[step] = row
        if self.file is not None:
            atomic_write_bytes(self.file, lambda handle: np.savez(handle, **self.saved))  # rewritten each step: not compressed

    def step_metrics(self, step: int) -> dict[str, float]:
        """``probe_acc/<task>`` of the tasks probed after ``step`` (empty where the step was not probed)."""
        row = self.rows.get(step, [])
        return {schema.probe_acc_metric(t.name): v for t, v in zip(self.tasks, row) if not math.isnan(v)}

    def finish(self, logger) -> None:
        """The probing matrix, the features and the summary metrics, logged to the run."""
        names, n = [t.name for t in self.tasks], len(self.tasks)
        matrix = [self.rows.get(step, [math.nan] * n) for step in range(1, max(self.rows) + 1)]  # row i - 1: after step i
        logger.log_dict(schema.probe_matrix_dict(names, self.rows.get(0, [math.nan] * n), matrix), schema.PROBE_MATRIX_ARTIFACT)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / schema.PROBE_FEATURES_ARTIFACT
            np.savez_compressed(path, **self.saved)
            logger.log_artifact(path)
        logger.log_final({f"probe_{k}": v for k, v in probe_summary(self.rows, n).items()})
