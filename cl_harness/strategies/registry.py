"""The strategy registry and the parsing of strategy specs from YAML.

A run's strategy is the base training loop (Avalanche's ``SupervisedTemplate``) plus a list of
plugins. Each registered strategy contributes a typed config and a builder that turns it into
plugins. A spec in YAML is one of::

    naive                                   # a registered name with its defaults
    {ewc: {ewc_lambda: 100}}                # one plugin with parameters
    {name: replay+ewc, plugins: [{replay: {mem_size: 200}}, {ewc: {ewc_lambda: 1000}}]}
    {name: mine, plugins: [{"my_pkg.my_module:MyPlugin": {alpha: 1}}]}   # a user's own plugin
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from cl_harness.config.experiment import BACKBONE_KINDS
from cl_harness.config.schema import did_you_mean, parse, to_dict
from cl_harness.config.yaml_io import KeyPath, Source
from cl_harness.errors import clip, short_repr
from cl_harness.strategies.user_plugins import EXIT_HINT, check_user_plugin, process_exit

ALL_SCENARIOS = ("class_incremental", "task_incremental", "domain_incremental")
TRAIN_DATA_MODES = ("current", "cumulative", "joint", "none")
ENCODER_ONLY = ("encoder",)
GENERATIVE_ONLY = ("causal_lm", "seq2seq")


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
    """A registered strategy: its name, config class, builder and provenance."""

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
    info: StrategyInfo | None = None  # None for a user's dotted-path plugin

    def prepare_model(self, model, context: BuildContext) -> None:
        """Let the strategy reshape the model (fresh and resumed runs alike)."""
        if self.info is not None and self.info.prepare_model is not None:
            self.info.prepare_model(self.config, model, context)

    def build(self, context: BuildContext) -> list:
        if self.info is None:
            return [load_user_plugin(self.name)(**self.config)]
        return self.info.build(self.config, context)

    def as_dict(self) -> dict:
        return {self.name: to_dict(self.config)}


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

    def as_dict(self) -> dict:
        return {"name": self.label, "plugins": [p.as_dict() for p in self.plugins]}


def load_user_plugin(path: str) -> Callable:
    """Import ``package.module:Name``; only called for names the user wrote."""
    module_name, _, attr = path.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr)


class StrategyRegistry:
    """Strategies by unique name."""

    def __init__(self) -> None:
        self._entries: dict[str, StrategyInfo] = {}

    def register(self, info: StrategyInfo) -> None:
        if info.name in self._entries:
            raise ValueError(f"strategy {info.name!r} is registered twice")
        if info.train_data not in TRAIN_DATA_MODES:
            raise ValueError(f"strategy {info.name!r}: train_data must be one of {TRAIN_DATA_MODES}")
        if not info.backbone_kinds or set(info.backbone_kinds) - set(BACKBONE_KINDS):
            raise ValueError(f"strategy {info.name!r}: backbone_kinds must be a non-empty subset of {BACKBONE_KINDS}")
        self._entries[info.name] = info

    def names(self) -> list[str]:
        return list(self._entries)

    def get(self, name: str) -> StrategyInfo:
        return self._entries[name]

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self._entries.values())

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
            if not isinstance(params, dict):
                raise source.error(path + (name,), "a user plugin takes a mapping of keyword arguments")
            try:
                plugin = load_user_plugin(name)
            except (ImportError, AttributeError) as exc:
                raise source.error(path, f"cannot import user plugin {clip(name, 120)!r}: {clip(exc, 200)}") from None
            except Exception as exc:  # noqa: BLE001 - the user's module may raise anything on import
                raise source.error(path, f"cannot import user plugin {clip(name, 120)!r}: {type(exc).__name__}: {clip(exc, 200)}") from None
            except BaseException as exc:  # sys.exit() on import, or another exit that is not Ctrl-C
                if isinstance(exc, KeyboardInterrupt):
                    raise
                raise source.error(path, f"user plugin module {clip(name.partition(':')[0], 120)!r} ended the process on import: "
                                         f"{process_exit(exc)}", hint=EXIT_HINT) from None
            check_user_plugin(plugin, name, dict(params), source, path)
            return PluginSpec(name, dict(params))
        if name not in self._entries:
            raise source.error(
                path,
                f"unknown strategy {name!r}; registered: {', '.join(self.names())}",
                hint=did_you_mean(name, self.names()) or "run `cl-harness strategies` to list them",
            )
        info = self._entries[name]
        return PluginSpec(name, parse(info.config_cls, params, source, path + (name,)), info)

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
        return specs
