"""The strategy registry and the parsing of strategy specs from YAML.

A run's strategy is the base training loop (Avalanche's ``SupervisedTemplate``) plus a list of
plugins. Each registered strategy contributes a typed config and a builder that turns it into
plugins. A spec in YAML is one of::

    naive                                   # a registered name with its defaults
    {ewc: {ewc_lambda: 100}}                # one plugin with parameters
    {name: replay+ewc, plugins: [{replay: {mem_size: 200}}, {ewc: {ewc_lambda: 1000}}]}
    {my_pkg.my_module:MY_STRATEGY: {lam: 0.5}}                        # a user's own StrategyInfo, by import path
    {name: mine, plugins: [{"my_pkg.my_module:MyPlugin": {alpha: 1}}]}   # a user's own Avalanche plugin class

Strategies of installed packages (entry-point group ``cl_harness.strategies``) are listed by name like the
built-in ones and imported only when listed or used.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from cl_harness.config.experiment import BACKBONE_KINDS
from cl_harness.config.names import file_name, first_collision
from cl_harness.config.schema import SUPPORTED_TYPES, did_you_mean, parse, to_dict, unsupported_type
from cl_harness.config.yaml_io import KeyPath, Source
from cl_harness.errors import ConfigError, clip, short_repr
from cl_harness.strategies.user_plugins import ENTRY_POINT_GROUP, check_user_plugin, entry_point_origin, import_object

ALL_SCENARIOS = ("class_incremental", "task_incremental", "domain_incremental")
TRAIN_DATA_MODES = ("current", "cumulative", "joint", "none")
ENCODER_ONLY = ("encoder",)
GENERATIVE_ONLY = ("causal_lm", "seq2seq")
STRATEGY_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")  # a strategy's name: a label, a folder name and a search prefix


@dataclass
class BuildContext:
    """What a builder may read: the run's scenario, stream size and training settings."""

    scenario: str
    num_tasks: int
    batch_size: int
    eval_batch_size: int
    device: Any = "cpu"
    model: Any = None  # the run's model (TextClassifier or GenerativeClassifier), for plugins that need it at construction


@dataclass(frozen=True)
class StrategyInfo:
    """A strategy: its name, typed config, builder and what it supports (public API: built-in and users' strategies alike).

    ``config_cls`` is a dataclass whose field defaults are the strategy's defaults; field metadata gives ``help`` and the
    bounds ``ge``/``gt``/``le``/``lt``; an optional ``check(source, path)`` method refuses bad combinations.
    ``build(config, context)`` returns the run's Avalanche plugins.
    """

    name: str
    config_cls: type
    build: Callable[[Any, BuildContext], list]
    summary: str
    paper: str = ""
    scenarios: tuple[str, ...] = ALL_SCENARIOS
    # The backbone kinds it runs on. Its plugins reach the model only through the backbone-kind seam (the model's
    # criterion, trained_units, distillation_view and distillation_mask; models/classifier.py, models/generative.py).
    backbone_kinds: tuple[str, ...] = BACKBONE_KINDS
    train_data: str = "current"  # current | cumulative | joint | none: what the base loop trains on at each step
    # Changes the model's structure (e.g. inserts LoRA adapters) before training and before a checkpoint is loaded:
    # prepare_model(config, model, context). At most one plugin of a strategy may do so.
    prepare_model: Callable[[Any, Any, BuildContext], None] | None = None
    # Adds a module per task (an adapter the task label selects): the model differs from task to task, so task kinds
    # trained outside the base loop on one shared model (mlm) cannot run under it.
    per_task_modules: bool = False
    # How many leading tasks it trains exactly as naive does, given the same seed, order and training settings: 1 when
    # nothing it does before or during task 1's training changes that training (it acts in after_training_exp, or from
    # task 2 on), so a grid trains task 1 once and forks it into this strategy's runs (docs/explanation/prefix-sharing.md).
    naive_prefix_tasks: int = 0
    # Generative backbones: the (shots per class, seed) of demonstrations put before every scored prompt, from its config.
    demonstrations: Callable[[Any], tuple[int, int]] | None = None
    strength: tuple[str, str] | None = None  # (the parameter scaling the loss terms it adds, values that acted on MiniLM): named when inert


@dataclass
class PluginSpec:
    """One configured plugin of a strategy."""

    name: str
    config: Any
    info: StrategyInfo | None = None  # None for a user's Avalanche plugin class named by import path
    path: str | None = None  # the import path a user named it by (``pkg.module:NAME``), kept in the resolved config

    def prepare_model(self, model, context: BuildContext) -> None:
        """Let the strategy reshape the model (fresh and resumed runs alike)."""
        if self.info is not None and self.info.prepare_model is not None:
            self.info.prepare_model(self.config, model, context)

    def build(self, context: BuildContext) -> list:
        if self.info is None:
            return [import_object(self.name)(**self.config)]
        return self.info.build(self.config, context)

    def as_dict(self) -> dict:
        return {self.path or self.name: to_dict(self.config)}


@dataclass
class StrategySpec:
    """A labelled strategy: the base loop plus its plugins."""

    label: str
    plugins: list[PluginSpec] = field(default_factory=list)

    @property
    def adapts_model(self) -> bool:
        """True when a plugin inserts its own modules into the backbone (the LoRA strategies)."""
        return any(p.info is not None and p.info.prepare_model is not None for p in self.plugins)

    @property
    def per_task_modules(self) -> bool:
        """True when a plugin adds a module per task (inc_lora, o_lora): see ``StrategyInfo.per_task_modules``."""
        return any(p.info is not None and p.info.per_task_modules for p in self.plugins)

    @property
    def naive_prefix_tasks(self) -> int:
        """Leading tasks every plugin trains as naive does (the least of them); 0 with a user's plugin, whose hooks are unknown."""
        if any(p.info is None for p in self.plugins):
            return 0
        return min((p.info.naive_prefix_tasks for p in self.plugins), default=0)

    @property
    def demonstrations(self) -> tuple[int, int] | None:
        """(shots per class, seed) of the demonstrations its scored prompts carry; None when they carry none."""
        shown = [p.info.demonstrations(p.config) for p in self.plugins if p.info is not None and p.info.demonstrations]
        return shown[0] if shown else None

    @property
    def train_data(self) -> str:
        modes = {p.info.train_data for p in self.plugins if p.info is not None} - {"current"}
        return modes.pop() if modes else "current"

    def parameters(self) -> dict[str, Any]:
        """Every plugin parameter by the name a search uses: ``<param>``, or ``<plugin>.<param>`` with several plugins."""
        several = len(self.plugins) > 1
        out = {}
        for plugin in self.plugins:
            values = to_dict(plugin.config) if plugin.info is not None else dict(plugin.config)
            out.update({f"{plugin.name}.{name}" if several else name: value for name, value in values.items()})
        return out

    def as_dict(self) -> dict:
        return {"name": self.label, "plugins": [p.as_dict() for p in self.plugins]}


def info_problem(info: Any) -> str | None:
    """What makes ``info`` unusable as a StrategyInfo (a user's may be anything), or None."""
    if not isinstance(info, StrategyInfo):
        return f"it is a {type(info).__name__}, not a cl_harness.strategies.StrategyInfo"
    if not isinstance(info.name, str) or not STRATEGY_NAME.fullmatch(info.name):
        return f"its name {short_repr(info.name)} is not a name: a letter, then letters, digits, _ or - (at most 64)"
    if not (isinstance(info.config_cls, type) and dataclasses.is_dataclass(info.config_cls)):
        return "its config_cls is not a dataclass"
    try:
        unsupported = unsupported_type(info.config_cls)
    except Exception as exc:  # noqa: BLE001 - annotations naming what the module does not define, say
        return f"the types of its config_cls fields cannot be read ({type(exc).__name__}: {clip(exc, 120)})"
    if unsupported:
        return f"its config_cls has a field of type {unsupported}, which a config value cannot be read into; use {SUPPORTED_TYPES}"
    if not callable(info.build):
        return "its build is not callable"
    if not info.backbone_kinds or set(info.backbone_kinds) - set(BACKBONE_KINDS):
        return f"backbone_kinds must be a non-empty subset of {BACKBONE_KINDS}"
    if info.train_data not in TRAIN_DATA_MODES:
        return f"train_data must be one of {', '.join(TRAIN_DATA_MODES)}"
    unknown = set(info.scenarios) - set(ALL_SCENARIOS)
    if unknown:
        return f"unknown scenarios {sorted(unknown)}; known: {', '.join(ALL_SCENARIOS)}"
    return None


class StrategyRegistry:
    """Strategies by unique name: the built-in ones, and those of installed packages, imported when first used."""

    def __init__(self) -> None:
        self._entries: dict[str, StrategyInfo] = {}
        self._origins: dict[str, str] = {}  # name -> the package an installed strategy comes from
        self._installed: dict[str, list] = {}  # name -> entry points not imported yet

    def register(self, info: StrategyInfo, origin: str | None = None) -> None:
        problem = info_problem(info)
        if problem:
            raise ValueError(f"strategy {getattr(info, 'name', info)!r}: {problem}")
        if info.name in self._entries:
            raise ValueError(f"strategy {info.name!r} is registered twice")
        self._entries[info.name] = info
        if origin:
            self._origins[info.name] = origin

    def add_installed(self, entry_points) -> None:
        """Entry points of the ``cl_harness.strategies`` group, imported only when listed or used."""
        for entry_point in entry_points:
            self._installed.setdefault(entry_point.name, []).append(entry_point)

    def names(self) -> list[str]:
        return list(dict.fromkeys([*self._entries, *self._installed]))

    def origin(self, name: str) -> str | None:
        """The package an installed strategy comes from; None for a built-in one."""
        return self._origins.get(name)

    def get(self, name: str) -> StrategyInfo:
        """The strategy called ``name``, an installed one imported now (ConfigError when it cannot be, or is ambiguous)."""
        if name in self._installed:
            self._load_installed(name)
        return self._entries[name]

    def _load_installed(self, name: str) -> None:
        points = self._installed[name]
        origins = [entry_point_origin(p) for p in points]
        where = f"group {ENTRY_POINT_GROUP}"
        if name in self._entries or len(points) > 1:
            claims = (["cl-harness (built in)"] if name in self._entries else []) + origins
            raise ConfigError(f"strategy name {name!r} is claimed twice: by {' and by '.join(claims)} (entry points of {where})",
                              hint="uninstall one of the packages, or rename the strategy (entry-point name and StrategyInfo.name)")
        (point,) = points
        try:
            info = import_object(point.value)
        except ConfigError as exc:
            raise ConfigError(f"installed strategy {name!r} ({origins[0]}) cannot be loaded: {exc.message}", hint=exc.hint) from None
        problem = info_problem(info) or (None if info.name == name else f"its StrategyInfo.name is {info.name!r}")
        if problem:
            raise ConfigError(f"installed strategy {name!r} ({origins[0]}, {point.value}): {problem}",
                              hint=f"its entry point in {where} must name a StrategyInfo whose name is the entry point's name")
        del self._installed[name]
        self.register(info, origins[0])

    def load_installed(self) -> list[str]:
        """Import every installed strategy not imported yet; the messages of those that cannot be."""
        problems = []
        for name in list(self._installed):
            try:
                self._load_installed(name)
            except ConfigError as exc:
                problems.append(str(exc))
        return problems

    def __contains__(self, name: str) -> bool:
        return name in self._entries or name in self._installed

    def __iter__(self):
        return iter(list(self._entries.values()))

    # -- parsing specs -------------------------------------------------------------------------
    def parse_plugin(self, entry: Any, source: Source, path: KeyPath) -> PluginSpec:
        if isinstance(entry, str):
            name, params = entry, {}
        elif isinstance(entry, dict) and len(entry) == 1:
            ((name, params),) = entry.items()
            params = {} if params is None else params
        else:
            raise source.error(path, f"a plugin is a name or a one-key mapping {{name: {{params}}}}; got {short_repr(entry)}")
        if ":" in str(name):
            return self._parse_imported(str(name), params, source, path)
        if name not in self:
            raise source.error(
                path,
                f"unknown strategy {name!r}; registered: {', '.join(self.names())}",
                hint=did_you_mean(name, self.names()) or "run `cl-harness strategies` to list them",
            )
        try:
            info = self.get(name)
        except ConfigError as exc:
            raise source.error(path, exc.message, hint=exc.hint) from None
        return PluginSpec(name, parse(info.config_cls, params, source, path + (name,)), info)

    def _parse_imported(self, reference: str, params: Any, source: Source, path: KeyPath) -> PluginSpec:
        """A user's StrategyInfo (typed like a built-in) or Avalanche plugin class, named by ``package.module:NAME``."""
        try:
            found = import_object(reference)
        except ConfigError as exc:
            raise source.error(path, exc.message, hint=exc.hint) from None
        if isinstance(found, StrategyInfo):
            problem = info_problem(found)
            if problem:
                raise source.error(path, f"{clip(reference, 120)!r}: {problem}")
            if found.name in self and not (found.name in self._entries and self._entries[found.name] is found):
                raise source.error(path, f"{clip(reference, 120)!r} is called {found.name!r}, as a registered strategy is",
                                   hint="give your StrategyInfo another name, or list the registered one by its name")
            return PluginSpec(found.name, parse(found.config_cls, params, source, path + (reference,)), found, reference)
        if not isinstance(params, dict):
            raise source.error(path + (reference,), "a user plugin takes a mapping of keyword arguments")
        check_user_plugin(found, reference, dict(params), source, path)
        return PluginSpec(reference, dict(params))

    def parse_spec(self, entry: Any, source: Source, path: KeyPath) -> StrategySpec:
        """One entry of an experiment's ``strategies`` list."""
        if isinstance(entry, dict) and ("plugins" in entry or "name" in entry):
            unknown = set(entry) - {"name", "plugins"}
            if unknown:
                key = sorted(unknown)[0]
                raise source.error(path + (key,), "unknown key; allowed: name, plugins", hint=did_you_mean(key, ["name", "plugins"]))
            plugins_data = entry.get("plugins") or []
            if not isinstance(plugins_data, list) or not plugins_data:
                raise source.error(path + ("plugins",), "list at least one plugin")
            plugins = [self.parse_plugin(p, source, path + ("plugins", i)) for i, p in enumerate(plugins_data)]
            label = str(entry.get("name") or "+".join(p.name for p in plugins))
        else:
            plugin = self.parse_plugin(entry, source, path)
            plugins, label = [plugin], plugin.name
        self._check_composition(plugins, source, path)
        return StrategySpec(label, plugins)

    def _check_composition(self, plugins: list[PluginSpec], source: Source, path: KeyPath) -> None:
        modes = {p.info.train_data for p in plugins if p.info is not None} - {"current"}
        if len(modes) > 1:
            raise source.error(path, f"cannot combine training-data modes {sorted(modes)}")
        adapting = [p.name for p in plugins if p.info is not None and p.info.prepare_model is not None]
        if len(adapting) > 1:
            raise source.error(path, f"strategies {adapting} each insert their own adapters into the backbone; combine at most one")
        names = [p.name for p in plugins]
        for name in names:
            if names.count(name) > 1:
                raise source.error(path, f"plugin {name!r} appears twice")

    def check_scenario(self, spec: StrategySpec, scenario: str, source: Source, path: KeyPath) -> None:
        """Refuse a strategy that does not support the stream's scenario."""
        for plugin in spec.plugins:
            if plugin.info is not None and scenario not in plugin.info.scenarios:
                raise source.error(
                    path,
                    f"strategy {plugin.name!r} does not support the {scenario} scenario "
                    f"(it supports: {', '.join(plugin.info.scenarios)})",
                )

    def check_backbone_kind(self, spec: StrategySpec, kind: str, source: Source, path: KeyPath) -> None:
        """Refuse a strategy that does not declare the experiment's backbone kind."""
        for plugin in spec.plugins:
            if plugin.info is not None and kind not in plugin.info.backbone_kinds:
                raise source.error(
                    path,
                    f"strategy {plugin.name!r} does not run on backbone.kind {kind} (it runs on: {', '.join(plugin.info.backbone_kinds)})",
                    hint="`cl-harness strategies` lists the backbone kinds of each strategy",
                )

    def parse_strategies(self, entries: list, scenario: str, source: Source, path: KeyPath = ("strategies",),
                         backbone_kind: str = "encoder") -> list[StrategySpec]:
        """All strategies of an experiment, with unique labels and scenario and backbone-kind support checked."""
        specs = []
        for index, entry in enumerate(entries):
            spec = self.parse_spec(entry, source, path + (index,))
            self.check_scenario(spec, scenario, source, path + (index,))
            self.check_backbone_kind(spec, backbone_kind, source, path + (index,))
            if spec.label in [s.label for s in specs]:
                raise source.error(path + (index,), f"duplicate strategy label {spec.label!r}; give each a distinct `name`")
            specs.append(spec)
        collision = first_collision([s.label for s in specs])
        if collision:
            first, second = (specs[i].label for i in collision)
            raise source.error(path + (collision[1],), f"strategy labels {first!r} and {second!r} both become the file name "
                               f"{file_name(second)!r} (run folders, plots)", hint="give each strategy a `name` that differs in letters or digits")
        return specs
