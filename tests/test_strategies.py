"""Every registered strategy: config round-trip, construction and a short run (one test over the registry)."""

from __future__ import annotations

import dataclasses

import pytest

from cl_harness.config.schema import parse, to_dict
from cl_harness.config.yaml_io import Source
from cl_harness.errors import ConfigError
from cl_harness.strategies import default_registry
from cl_harness.strategies.registry import BuildContext, StrategyInfo, StrategyRegistry

REGISTRY = default_registry()


@pytest.mark.parametrize("name", REGISTRY.names())
def test_config_round_trips(name):
    info = REGISTRY.get(name)
    config = parse(info.config_cls, {})
    assert parse(info.config_cls, to_dict(config)) == config


def test_names_are_unique():
    registry = StrategyRegistry()
    info = REGISTRY.get("naive")
    registry.register(info)
    with pytest.raises(ValueError, match="registered twice"):
        registry.register(dataclasses.replace(info))


def test_unknown_strategy_gets_a_suggestion():
    with pytest.raises(ConfigError, match="unknown strategy 'naiv'") as info:
        REGISTRY.parse_strategies(["naiv"], "class_incremental", Source("exp.yaml", {("strategies", 0): 7}))
    assert info.value.line == 7 and "naive" in (info.value.hint or "")


def test_duplicate_labels_are_refused():
    with pytest.raises(ConfigError, match="duplicate strategy label"):
        REGISTRY.parse_strategies(["naive", {"name": "naive", "plugins": ["naive"]}], "class_incremental", Source())


def test_a_strategy_is_refused_for_a_scenario_it_does_not_support():
    registry = StrategyRegistry()
    base = REGISTRY.get("naive")
    registry.register(dataclasses.replace(base, name="task_only", scenarios=("task_incremental",)))
    with pytest.raises(ConfigError, match="does not support the class_incremental scenario"):
        registry.parse_strategies(["task_only"], "class_incremental", Source())


def test_user_plugin_by_dotted_path_is_imported_and_built():
    spec = REGISTRY.parse_spec(
        {"name": "mine", "plugins": [{"avalanche.training.plugins:EWCPlugin": {"ewc_lambda": 3.0}}]}, Source(), ("strategies", 0)
    )
    (plugin,) = spec.plugins[0].build(BuildContext("class_incremental", 2, 8, 8))
    assert type(plugin).__name__ == "EWCPlugin" and plugin.ewc_lambda == 3.0


def test_user_plugin_that_cannot_be_imported_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot import 'no_such_pkg.mod:Plugin': no module named 'no_such_pkg'") as info:
        REGISTRY.parse_spec({"name": "x", "plugins": ["no_such_pkg.mod:Plugin"]}, Source(), ("strategies", 0))
    assert "looked for 'Plugin' in module 'no_such_pkg.mod'" in info.value.message
    assert "PYTHONPATH" in info.value.hint and "pip install" in info.value.hint


def test_strategy_info_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        REGISTRY.get("naive").name = "other"  # type: ignore[misc]
    assert isinstance(REGISTRY.get("naive"), StrategyInfo)
