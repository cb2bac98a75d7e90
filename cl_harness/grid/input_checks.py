"""Checks at validation time of what the schema alone cannot see: the device, the backbone's limits, metric keys, folders."""

from __future__ import annotations

import os
from pathlib import Path

from cl_harness.config.loader import LoadedExperiment
from cl_harness.errors import clip
from cl_harness.tracking.schema import metric_key
from cl_harness.tracking.store_guard import can_create_in

# Models whose position ids start after the padding index (the last two embeddings are unusable).
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer", "bart", "mbart")


def check_device(loaded: LoadedExperiment) -> None:
    """``training.device`` must name a device this machine has (cuda, cuda:N)."""
    import torch

    device = loaded.config.training.device
    if not device.startswith("cuda"):
        return
    path = ("training", "device")
    if not torch.cuda.is_available():
        raise loaded.source.error(path, f"{device!r} is not available on this machine (torch sees no CUDA device)",
                                  hint="use device: auto (CUDA when present, else CPU) or cpu")
    if ":" in device:
        index = device.split(":", 1)[1]
        count = torch.cuda.device_count()
        if not index.isdigit() or int(index) >= count:
            raise loaded.source.error(path, f"{device!r}: this machine has {count} CUDA device(s) (cuda:0..cuda:{count - 1})")


def position_limit(model_config, tokenizer=None) -> int | None:
    """The longest input the backbone can embed, from its config (and the tokenizer's own limit); None when unbounded."""
    limits = []
    positions = getattr(model_config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        offset = 2 if getattr(model_config, "model_type", "") in _OFFSET_POSITIONS else 0
        limits.append(positions - offset)
    model_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(model_max, int) and 0 < model_max < 1_000_000:
        limits.append(model_max)
    return min(limits) if limits else None


def check_max_length(loaded: LoadedExperiment, model_config, tokenizer=None) -> None:
    """``training.max_length`` must fit the backbone's position embeddings."""
    limit = position_limit(model_config, tokenizer)
    max_length = loaded.config.training.max_length
    if limit is not None and max_length > limit:
        raise loaded.source.error(
            ("training", "max_length"),
            f"{max_length} is more than the backbone takes ({limit} positions, from its config)",
            hint=f"set max_length to at most {limit}; longer texts are cut (or chunked)",
        )


def check_metric_keys(loaded: LoadedExperiment) -> None:
    """Every task's per-step MLflow key (``acc/<task>``) must differ from the others' once sanitised."""
    seen: dict[str, int] = {}
    for index, task in enumerate(loaded.stream.config.tasks):
        try:
            key = metric_key(f"acc/{task.name}")
        except ValueError:
            key = ""
        if key in seen or key in ("", "acc/seen_avg"):
            other = f"task {seen[key]}" if key in seen else "the seen-tasks average"
            raise loaded.stream.source.error(
                ("tasks", index, "name"),
                f"task name {clip(task.name, 60)!r} gives the MLflow key {key!r}, as {other} does",
                hint="give the tasks names that differ in letters, digits, '-', '_' or '.'",
            )
        seen[key] = index


def check_checkpoint_dir(loaded: LoadedExperiment) -> None:
    """``checkpoint_dir`` must be, or be creatable as, a writable folder (a probe file is created and removed)."""
    folder = Path(loaded.config.checkpoint_dir).expanduser()
    path = ("checkpoint_dir",)
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise loaded.source.error(path, f"{clip(probe, 160)} is a file, so run folders cannot be created under it")
    if probe.is_dir():
        why = can_create_in(probe)
        if why is not None:
            raise loaded.source.error(path, f"cannot create run folders in {clip(probe, 160)}: it is not writable ({why})")


def check_tracking_uri(loaded: LoadedExperiment, cli_uri: str | None) -> None:
    """The tracking URI in use (``--tracking-uri``, ``tracking.uri`` or $MLFLOW_TRACKING_URI) must be one a store accepts."""
    from cl_harness.tracking.store_guard import check_store_uri

    if cli_uri is not None:
        check_store_uri(cli_uri, key="--tracking-uri")
    elif loaded.config.tracking.uri is not None:
        path = ("tracking", "uri")
        check_store_uri(loaded.config.tracking.uri, "tracking.uri", loaded.source.file, loaded.source.line_of(path))
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        check_store_uri(os.environ["MLFLOW_TRACKING_URI"], key="$MLFLOW_TRACKING_URI")
