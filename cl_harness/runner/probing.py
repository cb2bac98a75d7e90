"""Linear probing in a run (``training.probe``): the probing matrix beside the accuracy matrix (evaluation/probe.py)."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np

from cl_harness.evaluation.probe import features, probe_accuracy, probe_summary
from cl_harness.runner.checkpoint import atomic_write_bytes
from cl_harness.tracking import schema


STEP_FILE = "probe_features.step{step}.npz"  # in the run folder: one step's features, until the run finishes


class LinearProbing:
    """Called after the run scores a step: a linear probe per labelled task on the model's frozen features, every task at
    step 0 (the untrained model), the tasks trained so far after each step. Draws nothing from the random stream.

    The rows live in the run's state (``state.json``) and, with a run folder, each step's features in a file beside it
    (``STEP_FILE``, written once), so a resumed run ends with the whole probing matrix. ``finish`` logs ``probe_accuracy_matrix.json``,
    ``probe_features.npz`` (what every probe was fitted and scored on) and ``probe_acc``, ``probe_bwt``,
    ``probe_forgetting``."""

    def __init__(self, tasks: list, probed: list[bool], env, rows: dict[int, list[float]], folder: Path | None = None) -> None:
        self.tasks = tasks  # EncodedTask, in training order
        self.probed = probed  # per task: whether its kind has class labels to probe
        self.env = env  # the run's KindEnv
        self.rows = rows  # step -> probe accuracy per task (NaN: not probed); the run state's own dict
        self.folder = folder
        self.saved: dict[str, np.ndarray] = {}  # probe_features.npz
        for step in rows if folder is not None else ():  # a resumed run: the features of the steps it keeps
            path = folder / STEP_FILE.format(step=step)
            if path.is_file():
                with np.load(path) as arrays:
                    self.saved.update(arrays)

    def __call__(self, model, step: int) -> None:
        row = [math.nan] * len(self.tasks)
        arrays: dict[str, np.ndarray] = {}
        for j, task in enumerate(self.tasks[: step or len(self.tasks)]):
            if not self.probed[j]:
                continue
            splits = {split: (features(model, inputs, task.index, self.env.eval_batch_size, self.env.device), targets)
                      for split, inputs, targets in (("train", task.train_inputs, task.train_targets),
                                                     ("test", task.test_inputs, task.test_targets))}
            row[j] = probe_accuracy(*splits["train"], *splits["test"])
            for split, (x, y) in splits.items():
                arrays[schema.probe_features_key(step, task.name, split, "x")] = x.numpy()
                arrays[schema.probe_features_key(step, task.name, split, "y")] = y.numpy()
        self.saved.update(arrays)
        self.rows[step] = row
        if self.folder is not None:
            atomic_write_bytes(self.folder / STEP_FILE.format(step=step), lambda handle: np.savez(handle, **arrays))

    def remove_files(self) -> None:
        """Delete the steps' feature files from the run folder (a finished run's features are in MLflow)."""
        for path in self.folder.glob(STEP_FILE.format(step="*")) if self.folder is not None else ():
            path.unlink(missing_ok=True)

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
