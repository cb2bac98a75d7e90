"""The ``search:`` block of an experiment: per-strategy spaces, trials, objective, seeds and pruner, validated.

Example::

    search:
      n_trials: 12
      seeds: [0]
      pruner: median            # median | hyperband | none
      spaces:
        ewc:                    # a strategy label of `strategies`
          training.lr: {low: 1e-5, high: 1e-3, log: true}
          ewc_lambda: {low: 10, high: 1e5, log: true}
          mode: {choice: [separate, online]}
        replay:
          mem_size: {low: 50, high: 500, type: int}

A parameter is ``training.<lr|weight_decay|epochs|batch_size>`` or a parameter of the strategy's
plugin (``<plugin>.<param>`` when the strategy has several plugins).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from cl_harness.config.experiment import TrainingConfig
from cl_harness.config.schema import check_value, did_you_mean, field_names, field_of, parse
from cl_harness.config.yaml_io import KeyPath, Source
from cl_harness.errors import ConfigError, short_repr
from cl_harness.strategies.registry import StrategySpec
from cl_harness.tracking import schema

#: Training parameters a search may vary (the others change tokenisation or the device).
SEARCHABLE_TRAINING = ("lr", "weight_decay", "epochs", "batch_size")
OBJECTIVES = (schema.VALID_ACC_METRIC,)


def check_once(values: list[Any], what: str, source: Source, path: KeyPath) -> None:
    """Refuse a list that gives a value twice (``1`` and ``1.0`` in a list of numbers are the same value)."""
    seen: dict[tuple[str, Any], int] = {}
    for index, value in enumerate(values):
        key = (type(value).__name__, value)
        if key in seen:
            raise source.error(path + (index,), f"lists a {what} twice: {short_repr(value)} (items {seen[key]} and {index})",
                               hint=f"give each {what} once")
        seen[key] = index


@dataclass
class ParamSpace:
    """One parameter's space: a uniform or log-uniform range (float or int), or a choice."""

    low: float | None = field(default=None, metadata={"help": "range start (inclusive)"})
    high: float | None = field(default=None, metadata={"help": "range end (inclusive)"})
    log: bool = field(default=False, metadata={"help": "sample log-uniformly"})
    type: Literal["float", "int"] = field(default="float", metadata={"help": "float | int"})
    choice: list[Any] | None = field(default=None, metadata={"help": "a list of values instead of a range"})

    def check(self, source: Source, path: KeyPath) -> None:
        if self.choice is not None:
            if self.low is not None or self.high is not None or self.log:
                raise source.error(path + ("choice",), "give either a choice or a range (low, high, log), not both")
            if not self.choice:
                raise source.error(path + ("choice",), "an empty choice: list at least one value")
            return
        if self.low is None or self.high is None:
            raise source.error(path, "a range needs `low` and `high` (or give `choice: [...]`)")
        if self.type == "int":
            for bound in ("low", "high"):
                if not float(getattr(self, bound)).is_integer():
                    raise source.error(path + (bound,), f"an int range needs whole-number bounds; {bound} is {getattr(self, bound)}",
                                       hint="e.g. {low: 1, high: 4, type: int}, or type: float")
        if not self.low < self.high:
            raise source.error(path + ("high",), f"empty range: high ({self.high}) must be greater than low ({self.low})")
        if self.log and self.low <= 0:
            raise source.error(path + ("low",), f"a log range must be positive; low is {self.low}", hint="use log: false, or low > 0")


@dataclass
class SearchConfig:
    """How the per-strategy search runs (spaces are parsed separately, per strategy and parameter)."""

    spaces: dict[str, Any] = field(metadata={"help": "per strategy label: {parameter: space}"})
    n_trials: int = field(default=10, metadata={"ge": 1, "help": "trials per strategy"})
    objective: Literal["valid_acc"] = field(
        default="valid_acc", metadata={"help": "valid_acc: final mean accuracy of the validation matrix (maximised)"}
    )
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "seeds of every trial; the objective is their mean"})
    pruner: Literal["median", "hyperband", "none"] = field(
        default="median", metadata={"help": "stops trials on per-step validation accuracy: median | hyperband | none"}
    )
    sampler_seed: int = field(default=0, metadata={"help": "seed of Optuna's TPE sampler"})

    def check(self, source: Source, path: KeyPath) -> None:
        if not self.seeds:
            raise source.error(path + ("seeds",), "list at least one seed")
        check_once(self.seeds, "seed", source, path + ("seeds",))


@dataclass
class SearchPlan:
    """A validated search: its settings and, per strategy label, ``{parameter: ParamSpace}``."""

    config: SearchConfig
    spaces: dict[str, dict[str, ParamSpace]]


def _plugin_params(spec: StrategySpec) -> dict[str, tuple[int, str]]:
    """Searchable names of a strategy's parameters -> (plugin index, field name); a single plugin's parameters are
    named with and without its ``<plugin>.`` prefix."""
    out: dict[str, tuple[int, str]] = {}
    several = len(spec.plugins) > 1
    for index, plugin in enumerate(spec.plugins):
        if plugin.info is None or not dataclasses.is_dataclass(plugin.config):
            continue
        for name in field_names(type(plugin.config)):
            out[f"{plugin.name}.{name}"] = (index, name)
            if not several:
                out[name] = (index, name)
    return out


def written_names(known: dict[str, tuple[int, str]]) -> list[str]:
    """Each parameter of ``known`` once, as a user writes it: ``lam`` for a single plugin's, ``<plugin>.<param>`` for several."""
    shortest: dict[tuple[int, str], str] = {}
    for name, target in known.items():
        if target not in shortest or name.count(".") < shortest[target].count("."):
            shortest[target] = name
    return sorted(shortest.values())


def check_distinct(names: list[str], known: dict[str, tuple[int, str]], source: Source, path: KeyPath) -> None:
    """Refuse two names for one parameter (``lam`` and ``l2anchor.lam``): one value would silently replace the other."""
    first: dict[tuple[int, str], str] = {}
    for name in names:
        target = known.get(name)
        if target is None:
            continue
        if target in first:
            raise source.error(path + (name,), f"{name} is the same parameter as {first[target]}; give it once")
        first[target] = name


def parse_search(data: Any, strategies: list[StrategySpec], source: Source, has_validation: bool,
                 path: KeyPath = ("search",)) -> SearchPlan | None:
    """The experiment's ``search`` block checked against its strategies; None when there is none."""
    if data is None:
        return None
    config = parse(SearchConfig, data, source, path)
    if not has_validation:
        raise source.error(path, "a search needs validation data, and the stream has none",
                           hint="give tasks `valid_per_class` or `valid_fraction` (carved from training data)")
    if not isinstance(config.spaces, dict) or not config.spaces:
        raise source.error(path + ("spaces",), "name at least one strategy and its parameters")
    labels = {spec.label: spec for spec in strategies}
    spaces: dict[str, dict[str, ParamSpace]] = {}
    for label, params in config.spaces.items():
        where = path + ("spaces", label)
        if label not in labels:
            raise source.error(where, f"no strategy labelled {label!r} in `strategies`; labels: {', '.join(labels)}",
                               hint=did_you_mean(label, labels) or "to run without the search block: --set search=null")
        if not isinstance(params, dict) or not params:
            raise source.error(where, "map at least one parameter to its space, e.g. training.lr: {low: 1e-5, high: 1e-3, log: true}")
        known = _plugin_params(labels[label])
        spaces[label] = {}
        for name, space in params.items():
            check_parameter(str(name), known, label, source, where + (name,), tuple(p.name for p in labels[label].plugins if p.info is None))
            spaces[label][str(name)] = parse(ParamSpace, space, source, where + (name,))
        check_distinct(list(spaces[label]), known, source, where)
        for name, space in spaces[label].items():
            check_space_values(name, space, labels[label], spaces[label], source, where + (name,))
    return SearchPlan(config, spaces)


def _target(name: str, spec: StrategySpec) -> tuple[type, str, Any]:
    """The config class and field a searched parameter sets, and the strategy's own config (None for training.*)."""
    if name.startswith("training."):
        return TrainingConfig, name.removeprefix("training."), None
    index, field_name = _plugin_params(spec)[name]
    config = spec.plugins[index].config
    return type(config), field_name, config


def _value_type(tp: Any) -> Any:
    """``tp`` without ``None`` (``int | None`` -> ``int``)."""
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0] if len(args) == 1 else tp
    return tp


def check_space_values(name: str, space: ParamSpace, spec: StrategySpec, searched: dict[str, ParamSpace], source: Source,
                       path: KeyPath) -> None:
    """Every choice and both ends of a range must be values the parameter's field accepts: its type, its bounds
    (``ge``/``gt``/``le``/``lt``) and its allowed values, checked by the schema's own ``check_value``.

    A choice is replaced by its converted values (``"1e-3"`` -> 0.001). A value the strategy's other settings refuse
    (EWC's ``decay`` while ``mode: separate``) is refused too, unless another of its parameters is searched as well.
    """
    cls, field_name, config = _target(name, spec)
    tp, fld = field_of(cls, field_name)
    kind = _value_type(tp)
    if space.choice is not None:
        for i, v in enumerate(space.choice):
            if isinstance(v, (list, dict)):
                raise source.error(path + ("choice", i), "a choice is one number, string, true/false or null; "
                                   f"Optuna cannot choose between lists or mappings (got {short_repr(v)})",
                                   hint=f"search a parameter that takes one value, or fix {name} in `strategies`")
        values = [check_value(tp, fld, v, source, path + ("choice", i)) for i, v in enumerate(space.choice)]
        check_once(values, "choice", source, path + ("choice",))
        space.choice[:] = values
        where = [path + ("choice", i) for i in range(len(values))]
    else:
        if kind not in (int, float):
            allowed = " | ".join(map(repr, typing.get_args(kind))) if typing.get_origin(kind) is Literal else None
            raise source.error(path, f"{name} is not a number, so it has no range; give `choice: [...]`"
                               + (f" of {allowed}" if allowed else ""))
        if kind is int and space.type != "int":
            raise source.error(path + ("type",), f"{name} is an integer; a float range would give it fractions",
                               hint=f"add type: int, e.g. {{low: {math.ceil(space.low)}, high: {math.floor(space.high)}, type: int}}")
        values = [check_value(tp, fld, getattr(space, bound), source, path + (bound,)) for bound in ("low", "high")]
        where = [path + ("low",), path + ("high",)]
    if config is None or getattr(config, "check", None) is None:
        return
    plugin_fields = {n for n in searched if n != name and _target(n, spec)[2] is config}
    if plugin_fields:  # the other searched values change what this one may be
        return
    for value, at in zip(values, where):
        try:
            dataclasses.replace(config, **{field_name: value}).check(source, path[:-1])
        except ConfigError as exc:  # the strategy's own cross-field rule, reported at the value
            raise source.error(at, f"{exc.message} (with the strategy's other settings)", hint=exc.hint) from None


def check_parameter(name: str, known: dict, label: str, source: Source, path: KeyPath, untyped: tuple[str, ...] = ()) -> None:
    """Refuse a parameter that is not a searchable training field nor one the strategy takes (``untyped``: its plain
    Avalanche plugins, whose parameters have no types or bounds to search within)."""
    if name.startswith("training."):
        key = name.removeprefix("training.")
        if key in SEARCHABLE_TRAINING:
            return
        if key in field_names(TrainingConfig):
            raise source.error(path, f"training.{key} cannot be searched; searchable: "
                               + ", ".join(f"training.{k}" for k in SEARCHABLE_TRAINING))
        raise source.error(path, f"unknown parameter {name!r}; training parameters: {', '.join(field_names(TrainingConfig))}",
                           hint=did_you_mean(key, SEARCHABLE_TRAINING))
    if name not in known:
        takes = ", ".join(written_names(known)) or "no parameters"
        hint = did_you_mean(name, list(known) + [f"training.{k}" for k in SEARCHABLE_TRAINING])
        if untyped and not hint:
            hint = (f"{untyped[0]} is a plain Avalanche plugin: its parameters have no types or bounds to search; "
                    "define it as a StrategyInfo (docs/extending.md) to search them")
        raise source.error(path, f"strategy {label!r} does not take {name!r}; it takes: {takes}, or training.<param>", hint=hint)
