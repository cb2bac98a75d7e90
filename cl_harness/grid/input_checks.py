"""Checks at validation time of what the schema alone cannot see: the device, the backbone's limits, metric keys, folders."""

from __future__ import annotations

from pathlib import Path

from cl_harness.config.loader import LoadedExperiment
from cl_harness.errors import ConfigError, clip
from cl_harness.tracking.store import choose_tracking_uri
from cl_harness.tracking.store_guard import UriSource, can_create_in, check_database_driver, check_store_uri, uri_source

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


def folder_obstacle(folder: Path) -> tuple[Path, str | None] | None:
    """What stops files being created in ``folder`` (made when missing): (the file in the way, None) or (the folder, why)."""
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        return probe, None
    why = can_create_in(probe) if probe.is_dir() else None
    return (probe, why) if why is not None else None


def check_checkpoint_dir(loaded: LoadedExperiment) -> None:
    """``checkpoint_dir`` must be, or be creatable as, a writable folder (a probe file is created and removed)."""
    obstacle = folder_obstacle(Path(loaded.config.checkpoint_dir).expanduser())
    if obstacle is None:
        return
    path, why = obstacle
    if why is None:
        raise loaded.source.error(("checkpoint_dir",), f"{clip(path, 160)} is a file, so run folders cannot be created under it")
    raise loaded.source.error(("checkpoint_dir",), f"cannot create run folders in {clip(path, 160)}: it is not writable ({why})")


def check_output_folder(folder: Path, flag: str = "--out") -> None:
    """An output folder flag (``--out``) must name a folder that is, or can be created as, writable (ConfigError, exit 2)."""
    obstacle = folder_obstacle(folder.expanduser())
    if obstacle is None:
        return
    path, why = obstacle
    if why is not None:
        raise ConfigError(f"cannot write to {clip(path, 160)}: it is not writable ({why}); give a writable folder", key=flag)
    if path == folder.expanduser():
        raise ConfigError(f"{clip(path, 160)} is a file; give a folder", key=flag)
    raise ConfigError(f"{clip(path, 160)} is a file, so {clip(folder, 160)} cannot be created; give a folder", key=flag)


def tracking_uri_source(loaded: LoadedExperiment, cli_uri: str | None) -> tuple[str, UriSource]:
    """The tracking URI in use and where it came from: ``--tracking-uri``, ``tracking.uri`` (file, line), the variable or the default."""
    if cli_uri is not None:
        return cli_uri, UriSource("--tracking-uri")
    if loaded.config.tracking.uri is not None:
        line = loaded.source.line_of(("tracking", "uri"))
        return loaded.config.tracking.uri, UriSource("tracking.uri", loaded.source.file, line)
    return choose_tracking_uri(None), uri_source(None)


def check_tracking_uri(loaded: LoadedExperiment, cli_uri: str | None) -> None:
    """The tracking URI in use (``--tracking-uri``, ``tracking.uri`` or $MLFLOW_TRACKING_URI) must be one a store accepts, with its driver."""
    uri, source = tracking_uri_source(loaded, cli_uri)
    if source.key is not None:
        check_store_uri(uri, source.key, source.file, source.line)
    check_database_driver(uri, source)
