"""Checkpoints after every task: model, optimizer, plugin states, accuracy matrix so far and RNG states.

Written atomically (a temporary file, then a rename) into the run's own folder, so a crash while
writing never leaves a corrupt checkpoint in place. Only files in that folder are ever loaded.
"""

from __future__ import annotations

import json
import os
import random
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FILE = "checkpoint.pt"
STATE_FILE = "state.json"


@dataclass
class RunState:
    """What survives between invocations for one run: its MLflow id, status and results so far."""

    run_id: str | None = None
    status: str = "RUNNING"  # RUNNING | FINISHED | FAILED | KILLED
    steps_done: int = 0
    tasks: list[str] = field(default_factory=list)
    initial: list[float] = field(default_factory=list)
    matrix: list[list[float]] = field(default_factory=list)
    correct: list[list[str | None]] = field(default_factory=list)  # [step][task]: packed per-example test correctness
    valid_initial: list[float] = field(default_factory=list)  # validation accuracies (NaN: no validation split)
    valid_matrix: list[list[float]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def atomic_write_bytes(path: Path, write) -> None:
    """Call ``write(file_object)`` on a temporary file beside ``path``, then rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_state(folder: Path, state: RunState) -> None:
    data = json.dumps(state.__dict__, indent=1).encode()
    atomic_write_bytes(folder / STATE_FILE, lambda f: f.write(data))


def load_state(folder: Path) -> RunState | None:
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    return RunState(**json.loads(path.read_text()))


def rng_states() -> dict[str, Any]:
    states = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def restore_rng_states(states: dict[str, Any]) -> None:
    random.setstate(states["python"])
    np.random.set_state(states["numpy"])
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_checkpoint(folder: Path, step: int, model, optimizer, plugins: list, clock, loss_scale=None) -> None:
    """Everything needed to continue training after ``step`` tasks (``loss_scale``: fp16's DynamicLossScale)."""
    payload = {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "plugins": plugins,  # the strategy's own plugins, pickled whole (buffers, importances, teachers)
        "clock": dict(clock.__dict__),
        "rng": rng_states(),
        "loss_scale": loss_scale.state_dict() if loss_scale else None,
    }
    atomic_write_bytes(folder / CHECKPOINT_FILE, lambda f: torch.save(payload, f))


def load_checkpoint(folder: Path) -> dict | None:
    """The run folder's checkpoint (trusted: the harness wrote it), or None."""
    path = folder / CHECKPOINT_FILE
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)
