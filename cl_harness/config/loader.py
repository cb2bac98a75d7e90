"""Load and validate experiment and stream YAML files into typed configs."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from cl_harness.config.experiment import ExperimentConfig
from cl_harness.config.limits import check_name, check_numbers
from cl_harness.config.schema import parse, to_dict
from cl_harness.config.stream import StreamConfig
from cl_harness.config.yaml_io import Source, apply_overrides, expand_vars, load_yaml, not_a_file
from cl_harness.errors import ConfigError


#: Keys whose string value is shorthand for a mapping: ``backbone: path-or-id`` is ``backbone: {name: path-or-id}``
#: (also below a ``--set`` flag: ``--set backbone.pooling=cls`` keeps the name).
SHORTHANDS = {("backbone",): "name"}


@dataclass
class LoadedStream:
    """A validated stream and where it came from; relative paths in it resolve against ``base_dir``."""

    config: StreamConfig
    source: Source
    path: Path

    @property
    def base_dir(self) -> Path:
        return self.path.parent


@dataclass
class LoadedExperiment:
    """A validated experiment with its stream."""

    config: ExperimentConfig
    source: Source
    path: Path
    stream: LoadedStream
    variables: Mapping[str, str] = field(default_factory=dict)
    overrides: tuple[str, ...] = ()  # the --set values, so a worker process can load the same experiment
    data_root: str | None = None

    def resolved(self) -> dict:
        """The final configuration as plain data: what ``config.yaml`` records for every run."""
        data = to_dict(self.config)
        data["stream"] = {"path": str(self.stream.path), **to_dict(self.stream.config)}
        return data


def make_variables(data_root: str | Path | None = None, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """``${VAR}`` values: the environment, plus ``DATA_ROOT`` from ``--data-root``."""
    variables = dict(os.environ if environ is None else environ)
    if data_root is not None:
        root = Path(data_root).expanduser().resolve()
        if not root.is_dir():
            raise ConfigError(f"{root} {'is not a folder' if root.exists() else 'does not exist'}", key="--data-root",
                              hint="pass the folder that ${DATA_ROOT} in the stream file stands for")
        variables["DATA_ROOT"] = str(root)
    return variables


def load_stream(path: str | Path, variables: Mapping[str, str] | None = None) -> LoadedStream:
    variables = make_variables() if variables is None else variables
    data, source = load_yaml(path, "stream")
    data = expand_vars(data, variables, source)
    check_numbers(data, source)
    return LoadedStream(parse(StreamConfig, data, source), source, Path(path).resolve())


def is_stream_file(path: str | Path) -> bool:
    """Whether ``path`` holds a stream (top-level ``tasks``, no ``stream`` key) rather than an experiment."""
    data, _ = load_yaml(path, "config")
    return isinstance(data, dict) and "tasks" in data and "stream" not in data


def load_experiment(
    path: str | Path,
    overrides: list[str] | tuple[str, ...] = (),
    data_root: str | Path | None = None,
) -> LoadedExperiment:
    """Read ``path``, apply ``--set`` overrides, validate it and load its stream."""
    variables = make_variables(data_root)
    data, source = load_yaml(path, "experiment")
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise source.error((), "an experiment file must be a mapping with keys name, stream, ...")
    data = apply_overrides(data, list(overrides), source, SHORTHANDS)
    data = expand_vars(data, variables, source)
    for (key,), name in SHORTHANDS.items():
        if isinstance(data.get(key), str):
            data[key] = {name: data[key]}
    check_numbers(data, source)
    config = parse(ExperimentConfig, data, source)
    check_name(config.name, source, ("name",), "experiment name")
    if config.tracking.experiment is not None:
        check_name(config.tracking.experiment, source, ("tracking", "experiment"), "MLflow experiment name")
    beside = Path(path).resolve().parent / Path(config.backbone.name).expanduser()
    if not Path(config.backbone.name).is_absolute() and beside.exists():  # a model folder next to the experiment
        config.backbone.name = str(beside)
    stream_path = Path(config.stream).expanduser()
    if not stream_path.is_absolute():
        stream_path = Path(path).resolve().parent / stream_path
    problem = not_a_file(stream_path, "stream")
    if problem is not None:
        raise source.error(("stream",), problem)
    stream = load_stream(stream_path, variables)
    root = variables.get("DATA_ROOT") if data_root is not None else None
    return LoadedExperiment(config, source, Path(path).resolve(), stream, variables, tuple(overrides), root)
