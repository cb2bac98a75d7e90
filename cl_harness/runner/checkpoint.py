"""Checkpoints after a task (every task, or once ``checkpoint_every_s`` have passed): model, optimizer, plugin states
and RNG states; the accuracy matrix so far is in the run's ``state.json``.

Written atomically (a temporary file, then a rename) into the run's own folder, so a crash while
writing never leaves a corrupt checkpoint in place. Only files in that folder are ever loaded.
Beside each checkpoint, ``<file>.json`` records its size and sha256, checked on loading; the
previous checkpoint is kept as ``checkpoint.prev.pt`` until the new one is complete, and a damaged
checkpoint falls back to it.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import math
import os
import pickle
import random
import shutil
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from cl_harness.config.guard import GuardError, parse_json, parse_yaml
from cl_harness.errors import ConfigError, TrainingError, clip, error_line, short_repr

CHECKPOINT_FILE = "checkpoint.pt"
PREVIOUS_CHECKPOINT_FILE = "checkpoint.prev.pt"
DIGEST_SUFFIX = ".json"  # checkpoint.pt.json: {"size": bytes, "sha256": hex, "step": k}
RESTART_HINT = "run the same command with --restart to start this grid over (the old run folder is kept, renamed)"
STATE_FILE = "state.json"
ERROR_FILE = "error.txt"  # the traceback of the error that ended the run FAILED
RUN_STATUSES = ("RUNNING", "FINISHED", "FAILED", "KILLED")


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
    train_time_saved_s: float = 0.0  # task 1 taken from a shared prefix: its training seconds, not spent by this run
    probe_rows: dict[int, list[float]] = field(default_factory=dict)  # step -> linear-probe accuracy per task (NaN: not probed)
    data_sha256: dict[str, str] = field(default_factory=dict)  # task -> sha256 of its tokenised splits (empty: written before)

    def __post_init__(self) -> None:
        self.probe_rows = {int(step): row for step, row in self.probe_rows.items()}  # JSON keeps the steps as text


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_fraction(value: Any, nan: bool = False) -> bool:
    """Whether ``value`` is an accuracy, a number in [0, 1] (or NaN where ``nan``)."""
    return _is_number(value) and (0.0 <= value <= 1.0 or (nan and math.isnan(value)))


def _row_problem(name: str, row: Any, width: int, nan_at: Any = (), empty: bool = False) -> str | None:
    """What is wrong with a row of ``width`` accuracies (NaN allowed at the indices in ``nan_at``, ``empty`` rows where allowed)."""
    if not isinstance(row, list):
        return f"{name} is {short_repr(row, 30)}, not a list"
    if empty and not row:
        return None
    if len(row) != width:
        return f"{name} has {len(row)} value{'' if len(row) == 1 else 's'} for {width} tasks"
    bad = next((j for j, value in enumerate(row) if not _is_fraction(value, nan=nan_at is True or j in nan_at)), None)
    return None if bad is None else f"{name}[{bad}] is {short_repr(row[bad], 30)}, not an accuracy in [0, 1]"


def _rows_problem(name: str, rows: Any, width: int, nan_at: Any = (), empty: bool = False) -> str | None:
    """The first problem of a list of rows (``_row_problem``), or None."""
    if not isinstance(rows, list):
        return f"{name} is {short_repr(rows, 30)}, not a list of rows"
    return next((p for i, row in enumerate(rows) if (p := _row_problem(f"{name}[{i}]", row, width, nan_at, empty))), None)


def state_problem(state: RunState, tasks: list[str] | None = None) -> str | None:
    """What makes ``state`` not a run's state (of ``tasks`` when given): types, lengths, accuracies outside [0, 1], steps; None if nothing."""
    if not isinstance(state.tasks, list) or not all(isinstance(t, str) for t in state.tasks):
        return f"tasks is {short_repr(state.tasks, 40)}, not a list of task names"
    if tasks is not None and state.tasks and state.tasks != tasks:
        return f"its tasks {short_repr(state.tasks, 60)} are not this run's {short_repr(tasks, 60)}"
    width = len(tasks if tasks is not None and not state.tasks else state.tasks)
    if state.status not in RUN_STATUSES or not (state.run_id is None or isinstance(state.run_id, str)):
        return f"status {short_repr(state.status, 20)} or run_id {short_repr(state.run_id, 40)} is not a run's"
    if not isinstance(state.error, (str, type(None))) or not _is_number(state.train_time_saved_s):
        return "error is not text, or train_time_saved_s not a number"
    untested = [j for j, v in enumerate(state.initial) if isinstance(v, float) and math.isnan(v)] if isinstance(state.initial, list) else []
    # NaN only where the untrained model could not be scored either (a column without a scorable example), else [0, 1]
    problem = (_row_problem("initial", state.initial, width, untested, empty=True)
               or _rows_problem("matrix", state.matrix, width, untested)
               or _row_problem("valid_initial", state.valid_initial, width, True, empty=True)  # NaN: no validation split
               or _rows_problem("valid_matrix", state.valid_matrix, width, True, empty=True))
    if problem:
        return problem
    rows = len(state.matrix)
    if rows > width or (rows and not state.initial) or len(state.valid_matrix) > rows:
        return f"matrix has {rows} rows (valid_matrix {len(state.valid_matrix)}) for {width} tasks and {len(state.initial)} initial values"
    steps = state.steps_done
    if not isinstance(steps, int) or isinstance(steps, bool) or not 0 <= steps <= rows:
        return f"steps_done is {short_repr(steps, 20)}, not a whole number of tasks from 0 to the {rows} rows of matrix"
    correct = state.correct
    if not isinstance(correct, list) or len(correct) > rows + 1 or not all(
            isinstance(r, list) and len(r) == width and all(isinstance(c, (str, type(None))) for c in r) for r in correct):
        return f"correct is not a list of up to {rows + 1} rows of {width} packed results"
    if not isinstance(state.metrics, dict) or not all(isinstance(k, str) and _is_number(v) for k, v in state.metrics.items()):
        return "metrics is not a mapping of names to numbers"
    probe = next((s for s, row in state.probe_rows.items() if not 0 <= s <= width or _row_problem("", row, width, True)), None)
    if probe is not None:
        return f"probe_rows holds a bad row for step {probe} of {width} tasks"
    if not isinstance(state.data_sha256, dict) or not all(isinstance(v, str) for v in state.data_sha256.values()):
        return "data_sha256 is not a mapping of task names to hashes"
    return None


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


def write_run_file(path: Path, data: Any) -> None:
    """A run-folder file written atomically: JSON, or YAML for a ``.yaml`` name."""
    text = yaml.safe_dump(data, sort_keys=False) if path.suffix == ".yaml" else json.dumps(data, indent=1)
    encoded = text.encode("utf-8")
    atomic_write_bytes(path, lambda f: f.write(encoded))


def read_run_file(path: Path) -> dict:
    """A run-folder file (JSON, or YAML for a ``.yaml`` name) read through the input guards.

    Whatever is wrong with it (cut short, not text, not a mapping) is one ConfigError naming the file and ``--restart``.
    """
    try:
        text = path.read_text(encoding="utf-8")
        data = parse_yaml(text)[0] if path.suffix == ".yaml" else parse_json(text)
    except (OSError, UnicodeError, ValueError, GuardError, yaml.YAMLError) as exc:
        problem = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"the file is damaged ({clip(problem, 120)})", file=path, hint=RESTART_HINT) from None
    if not isinstance(data, dict):
        raise ConfigError(f"the file is damaged (it holds {short_repr(data, 40)}, not a mapping)", file=path, hint=RESTART_HINT)
    return data


def save_state(folder: Path, state: RunState) -> None:
    write_run_file(folder / STATE_FILE, state.__dict__)


def load_state(folder: Path, tasks: list[str] | None = None) -> RunState | None:
    """The run state in ``folder`` (None without one), checked (``state_problem``): a ConfigError naming the file and ``--restart``."""
    path = folder / STATE_FILE
    if not path.exists():
        return None
    data = read_run_file(path)
    try:
        state = RunState(**data)
    except (TypeError, ValueError, AttributeError):
        raise ConfigError("the file is damaged (it is not a run's state)", file=path, hint=RESTART_HINT) from None
    problem = state_problem(state, tasks)
    if problem:
        raise ConfigError(f"the file is damaged (not a consistent run state: {problem})", file=path, hint=RESTART_HINT)
    return state


def data_fingerprints(tasks: list) -> dict[str, str]:
    """Per task (an EncodedTask), the sha256 of its tokenised splits' tensors (inputs and targets, train/test/valid)."""
    fingerprints = {}
    for task in tasks:
        digest = hashlib.sha256()
        for name in ("train_inputs", "train_targets", "test_inputs", "test_targets", "valid_inputs", "valid_targets"):
            tensor = getattr(task, name, None)
            if tensor is None:
                digest.update(f"{name}:none;".encode())
                continue
            flat = tensor.detach().cpu().contiguous().reshape(-1)
            digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
            digest.update(flat.view(torch.uint8).numpy().data)  # the bytes as they are: no copy
        fingerprints[task.name] = digest.hexdigest()
    return fingerprints


def check_same_data(state: RunState, fingerprints: dict[str, str], path: Path) -> None:
    """Refuse a run state whose tasks' data (``state.data_sha256``) differ from ``fingerprints``; an older state without them passes."""
    changed = [name for name, sha in state.data_sha256.items() if name in fingerprints and fingerprints[name] != sha]
    if changed:
        tasks = ", ".join(repr(name) for name in changed)
        raise ConfigError(f"the data of {'task' if len(changed) == 1 else 'tasks'} {clip(tasks, 160)} changed since this run was checkpointed (its tokenised examples "
                          "differ), and resuming would mix scores of the old and the new data; restore the files as they were "
                          "to resume", file=path, hint=RESTART_HINT)


def load_model_state(model: torch.nn.Module, weights: dict, where: Path | None = None) -> None:
    """Load a checkpoint's ``weights`` into ``model``, after checking that they fit the model the current config builds.

    A checkpoint written before the data, the backbone or the strategy changed does not: the ConfigError says which
    parameter differs and how, and offers ``--restart``.
    """
    current = model.state_dict()
    changed = [name for name in weights if name in current and tuple(weights[name].shape) != tuple(current[name].shape)]
    extra = [name for name in weights if name not in current]
    missing = [name for name in current if name not in weights]
    if changed:
        name = next((n for n in changed if n.startswith("heads.")), changed[0])  # the output layer says most
        then, now = list(weights[name].shape), list(current[name].shape)
        problem = f"parameter {name!r} has shape {then} in the checkpoint, {now} now"
        if name.startswith("heads."):
            problem += f" (the output layer: {then[0]} outputs then, {now[0]} now)"
    elif extra or missing:
        name = (extra or missing)[0]
        problem = f"parameter {name!r} is {'in the checkpoint but not in the model built now' if extra else 'not in the checkpoint'}"
    else:
        model.load_state_dict(weights)
        return
    raise ConfigError(f"the checkpoint does not fit the current config: {problem}; did the data (a task's classes), the "
                      "backbone or the strategy change since it was written?", file=where, hint=RESTART_HINT)


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


def checkpoint_payload(step: int, model, optimizer, plugins: list, clock, loss_scale=None) -> dict:
    """Everything needed to continue training after ``step`` tasks (``loss_scale``: fp16's DynamicLossScale)."""
    return {
        "step": step,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "plugins": plugins,  # the strategy's own plugins, pickled whole (buffers, importances, teachers)
        "clock": dict(clock.__dict__),
        "rng": rng_states(),
        "loss_scale": loss_scale.state_dict() if loss_scale else None,
    }


def save_checkpoint(folder: Path, step: int, model, optimizer, plugins: list, clock, loss_scale=None) -> None:
    """The checkpoint after ``step`` tasks, written and verified (see ``checkpoint_payload``)."""
    start_checkpoint(folder, step, model, optimizer, plugins, clock, loss_scale).wait()


def start_checkpoint(folder: Path, step: int, model, optimizer, plugins: list, clock, loss_scale=None) -> PendingCheckpoint:
    """Serialise the checkpoint after ``step`` tasks now, and write it in the background; ``wait()`` once it must be on disk.

    The payload is a snapshot taken here: training may change the model while the bytes are written.
    """
    data = serialize(folder, checkpoint_payload(step, model, optimizer, plugins, clock, loss_scale))
    return PendingCheckpoint(folder, step, data)


class PendingCheckpoint:
    """A serialised checkpoint that a background thread writes, hashes and syncs (``write_verified``).

    The run starts one right after a task's training, scores the tasks meanwhile, and waits for it before the
    step counts as done: the same guarantees as a synchronous write, with the disk time hidden behind evaluation.
    A write error (a full disk) is raised by ``wait``.
    """

    def __init__(self, folder: Path, step: int, data: memoryview) -> None:
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._write, args=(folder, step, data), name="cl-harness-checkpoint")
        self._thread.start()

    def _write(self, folder: Path, step: int, data: memoryview) -> None:
        try:
            write_verified(folder, step, data)
        except BaseException as exc:  # noqa: BLE001 - handed to the thread that waits
            self._error = exc

    def wait(self) -> None:
        """Return once the checkpoint is on disk; raise what the write raised."""
        self._thread.join()
        error, self._error = self._error, None
        if error is not None:
            raise error


def serialize(folder: Path, payload: dict) -> memoryview:
    """``torch.save`` of a checkpoint payload into memory (its failures raised as OSError naming ``folder``'s checkpoint)."""
    buffer = io.BytesIO()
    try:
        torch.save(payload, buffer)
    except RuntimeError as exc:
        raise _as_os_error(exc, folder) from exc
    except (TypeError, AttributeError, pickle.PicklingError) as exc:  # a plugin took on state that cannot be pickled
        raise TrainingError(f"cannot save the checkpoint: {unpicklable_state(payload.get('plugins', [])) or error_line(exc)}; "
                            "keep only picklable state on a plugin (no generators, open files, locks or lambdas), or leave "
                            "it out in __getstate__") from exc
    return buffer.getbuffer()


def unpicklable_state(plugins: list) -> str | None:
    """The first plugin attribute that cannot be pickled, as ``Plugin.attribute holds a <type>``; None if none is found."""
    for plugin in plugins:
        for attribute, value in getattr(plugin, "__dict__", {}).items():
            try:
                pickle.dumps(value)
            except Exception:  # noqa: BLE001 - pickling raises TypeError, PicklingError, AttributeError...
                return f"{type(plugin).__name__}.{attribute} holds a {type(value).__name__}, which cannot be pickled"
    return None


def file_digest(path: Path) -> dict:
    """Size and sha256 of a file."""
    sha = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            sha.update(block)
    return {"size": path.stat().st_size, "sha256": sha.hexdigest()}


def _as_os_error(exc: RuntimeError, folder: Path) -> OSError:
    """torch.save reports a failed write (a full disk) as RuntimeError; the harness handles it as the OSError it is."""
    try:
        full = shutil.disk_usage(folder).free < 64 * 2**20
    except OSError:
        full = False
    code = errno.ENOSPC if full or "write" in str(exc).lower() else errno.EIO
    return OSError(code, f"{os.strerror(code)} while writing a checkpoint", str(folder / CHECKPOINT_FILE))


def write_verified(folder: Path, step: int, data: memoryview | bytes) -> None:
    """Write ``checkpoint.pt`` atomically with its digest beside it, keeping the previous one until the new one is whole.

    The sha256 is taken from ``data`` in memory (one pass, no re-read of the file).
    """
    path = folder / CHECKPOINT_FILE
    folder.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{CHECKPOINT_FILE}.", suffix=".tmp")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        digest = {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "step": step}
        previous = folder / PREVIOUS_CHECKPOINT_FILE
        if path.is_file() and verify(path) is None:  # the last good one stays until the new one is in place
            os.replace(path, previous)
            os.replace(digest_path(path), digest_path(previous))
        digest_path(path).unlink(missing_ok=True)
        os.replace(tmp, path)
        write_run_file(digest_path(path), digest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def digest_path(path: Path) -> Path:
    return path.with_name(path.name + DIGEST_SUFFIX)


def verify(path: Path) -> str | None:
    """None if ``path`` matches the size and sha256 recorded beside it, else what is wrong."""
    return _digest_problem(path, path.stat().st_size, lambda: file_digest(path)["sha256"])


def _digest_problem(path: Path, size: int, sha256) -> str | None:
    """What is wrong with ``path``'s recorded size and hash against ``size`` and ``sha256()`` (called only if needed)."""
    if not digest_path(path).exists():
        return "its size and hash file is missing"
    try:
        expected = read_run_file(digest_path(path))
    except ConfigError:
        return "its size and hash file is damaged"
    if size != expected.get("size"):
        return f"it has {size} bytes, {expected.get('size')} were written"
    if sha256() != expected.get("sha256"):
        return "its sha256 differs from the one written"
    return None


def _try_load(path: Path) -> tuple[dict | None, str | None]:
    """The checkpoint at ``path`` and None, or None and what is wrong with it: read once, hashed from memory, loaded."""
    if not path.is_file():
        return None, None
    data = memoryview(path.read_bytes())
    problem = _digest_problem(path, len(data), lambda: hashlib.sha256(data).hexdigest())
    if problem is not None and digest_path(path).exists():
        return None, problem
    try:  # a checkpoint without a digest file (written by an older version, or just before it): it must load
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError... on a damaged file
        return None, f"it cannot be read ({type(exc).__name__})"
    if not isinstance(payload, dict) or not isinstance(payload.get("step"), int) or payload["step"] < 1:
        return None, "it holds no checkpoint"
    return payload, None


def check_checkpoint_files(folder: Path) -> None:
    """Refuse a run folder where a checkpoint or its digest is a folder or another non-file (the next write would fail)."""
    for name in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE):
        for path in (folder / name, digest_path(folder / name)):
            if (path.exists() or path.is_symlink()) and not path.is_file():
                what = "a folder" if path.is_dir() else "not a file (a link to nothing, or a special file)"
                raise ConfigError(f"the checkpoint's place holds {what}; the run cannot be resumed or checkpointed",
                                  file=path, hint=RESTART_HINT)


def load_intact(path: Path) -> dict | None:
    """The checkpoint at ``path`` if it is there and matches its recorded size and sha256, else None."""
    payload, problem = _try_load(path)
    return payload if problem is None and digest_path(path).exists() else None


def load_checkpoint(folder: Path, scored: int | None = None) -> dict | None:
    """The run folder's checkpoint, verified; a damaged one falls back to the previous one; None when there is none.

    Raises ConfigError (naming the file and ``--restart``) when checkpoints exist but none is intact. With ``scored``
    (the steps state.json holds rows for), a checkpoint past them, written just before a kill that left its row
    unsaved, gives way to the previous one.
    """
    check_checkpoint_files(folder)
    path = folder / CHECKPOINT_FILE
    payload, problem = _try_load(path)
    if payload is not None and (scored is None or payload["step"] <= scored):
        return payload
    previous, previous_problem = _try_load(folder / PREVIOUS_CHECKPOINT_FILE)
    if previous is not None and scored is not None and previous["step"] > scored:
        previous = None
    if payload is not None:  # ahead of state.json: its step was never recorded
        return previous
    if previous is not None:
        if problem:
            print(f"warning: {path} is damaged ({problem}); resuming from the previous checkpoint (after task "
                  f"{previous['step']})", file=sys.stderr, flush=True)
        return previous
    if problem or previous_problem:
        damaged = path if problem else folder / PREVIOUS_CHECKPOINT_FILE
        raise ConfigError(f"the checkpoint is damaged ({problem or previous_problem}) and no earlier one is intact",
                          file=damaged, hint=RESTART_HINT)
    return None


def remove_checkpoints(folder: Path) -> None:
    """Delete the run folder's checkpoints and their digests (a finished run needs no weights)."""
    for name in (CHECKPOINT_FILE, PREVIOUS_CHECKPOINT_FILE):
        (folder / name).unlink(missing_ok=True)
        digest_path(folder / name).unlink(missing_ok=True)
