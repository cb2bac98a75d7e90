"""Linear probing in a run (``training.probe``): the probing matrix beside the accuracy matrix (evaluation/probe.py)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np

from cl_harness.evaluation.probe import features, probe_accuracy, probe_summary
from cl_harness.tracking import schema


class LinearProbing:
    """Called after the run scores a step: a linear probe per classification task on the model's frozen features, every
    task at step 0 (the untrained model), the tasks trained so far after each step. Logs ``probe_acc/<task>`` per step and,
    after the last step, ``probe_accuracy_matrix.json``, ``probe_features.npz`` (what every probe was fitted and scored on)
    and ``probe_acc``, ``probe_bwt``, ``probe_forgetting``. Draws nothing from the random stream."""

    def __init__(self, tasks: list, env, logger=None) -> None:
        self.tasks = tasks  # EncodedTask, in training order
        self.env = env  # the run's KindEnv
        self.logger = logger
        self.rows: dict[int, list[float]] = {}  # step -> probe accuracy per task (NaN: not probed)
        self.saved: dict[str, np.ndarray] = {}  # probe_features.npz

    def __call__(self, model, step: int) -> None:
        row = [math.nan] * len(self.tasks)
        for j, task in enumerate(self.tasks[: step or len(self.tasks)]):
            if task.kind != "classification":
                continue
            splits = {split: (features(model, inputs, task.index, self.env.eval_batch_size, self.env.device), targets)
                      for split, inputs, targets in (("train", task.train_inputs, task.train_targets),
                                                     ("test", task.test_inputs, task.test_targets))}
            row[j] = probe_accuracy(*splits["train"], *splits["test"])
            for split, (x, y) in splits.items():
                self.saved[schema.probe_features_key(step, task.name, split, "x")] = x.numpy()
                self.saved[schema.probe_features_key(step, task.name, split, "y")] = y.numpy()
        self.rows[step] = row
        if self.logger is not None:
            self.logger.log_step(step, {schema.probe_acc_metric(t.name): v for t, v in zip(self.tasks, row) if not math.isnan(v)})
            if step == len(self.tasks):
                self.finish()

    def finish(self) -> None:
        """The probing matrix, the features and the summary metrics, logged to the run."""
        names, n = [t.name for t in self.tasks], len(self.tasks)
        matrix = [self.rows.get(step, [math.nan] * n) for step in range(1, max(self.rows) + 1)]  # row i - 1: after step i
        self.logger.log_dict(schema.probe_matrix_dict(names, self.rows.get(0, [math.nan] * n), matrix), schema.PROBE_MATRIX_ARTIFACT)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / schema.PROBE_FEATURES_ARTIFACT
            np.savez_compressed(path, **self.saved)
            self.logger.log_artifact(path)
        self.logger.log_final({f"probe_{k}": v for k, v in probe_summary(self.rows, n).items()})
