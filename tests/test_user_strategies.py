"""A researcher's own strategy, first-class: registered from an installed package (entry point) or by import path,
validated, searched and listed like a built-in one, and checked by cl_harness.testing; the example package in
examples/l2anchor is the strategy used."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest
from conftest import REPO

from cl_harness.config.yaml_io import Source
from cl_harness.errors import ConfigError
from cl_harness.search.config import parse_search
from cl_harness.strategies import StrategyInfo, default_registry
from cl_harness.strategies.registry import info_problem
from cl_harness.strategies.user_plugins import ENTRY_POINT_GROUP
from cl_harness.testing import StrategyCheckError, check_strategy

EXAMPLE = REPO / "examples" / "l2anchor"
GROUP_POINT = "l2anchor:L2_ANCHOR"


@pytest.fixture
def l2anchor(monkeypatch):
    """The example strategy's module, importable as an installed package would be."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import l2anchor

    return l2anchor


def installed(*points: tuple[str, str]):
    """The built-in registry plus these (name, import path) entry points, as installed packages would declare them."""
    registry = default_registry(installed=False)
    registry.add_installed([EntryPoint(name, value, ENTRY_POINT_GROUP) for name, value in points])
    return registry


def parse(registry, entries: list, scenario: str = "class_incremental"):
    return registry.parse_strategies(entries, scenario, Source("exp.yaml", {("strategies", 1): 9}))


def test_an_installed_strategy_is_validated_like_a_built_in_one(l2anchor):
    registry = installed(("l2anchor", GROUP_POINT))
    assert "l2anchor" in registry.names()
    naive, mine = parse(registry, ["naive", {"l2anchor": {"lam": 0.5}}])
    assert mine.label == "l2anchor" and mine.plugins[0].info is l2anchor.L2_ANCHOR and mine.plugins[0].config.lam == 0.5
    assert mine.parameters() == {"lam": 0.5} and mine.naive_prefix_tasks == 1
    with pytest.raises(ConfigError, match="unknown key") as info:
        parse(registry, ["naive", {"l2anchor": {"lamb": 0.5}}])
    assert "did you mean 'lam'" in info.value.hint and info.value.line == 9
    with pytest.raises(ConfigError, match="must be >= 0.0"):
        parse(registry, ["naive", {"l2anchor": {"lam": -1}}])


def test_a_strategy_info_named_by_import_path_keeps_its_path_in_the_resolved_config(l2anchor):
    (spec,) = parse(default_registry(installed=False), [{GROUP_POINT: {"lam": 2}}])
    assert spec.label == "l2anchor" and spec.plugins[0].info is l2anchor.L2_ANCHOR
    assert spec.as_dict() == {"name": "l2anchor", "plugins": [{GROUP_POINT: {"lam": 2.0}}]}
    (again,) = parse(default_registry(installed=False), spec.as_dict()["plugins"])  # config.yaml runs again
    assert again.plugins[0].config == spec.plugins[0].config


@pytest.mark.parametrize("points, used, message", [
    ([("ewc", GROUP_POINT)], "ewc", re.escape("strategy name 'ewc' is claimed twice: by cl-harness (built in) and by entry point l2anchor")),
    ([("l2anchor", GROUP_POINT), ("l2anchor", "l2anchor:build")], "l2anchor", "claimed twice"),
    ([("pull", GROUP_POINT)], "pull", "its StrategyInfo.name is 'l2anchor'"),
    ([("l2anchor", "l2anchor:build")], "l2anchor", "it is a function, not a cl_harness.strategies.StrategyInfo"),
    ([("gone", "no_such_module_27:INFO")], "gone", "no module named 'no_such_module_27'"),
])
def test_an_installed_strategy_that_cannot_be_used_is_refused_where_it_is_named(l2anchor, points, used, message, capsys):
    registry = installed(*points)
    with pytest.raises(ConfigError, match=message) as info:
        parse(registry, ["naive", used])
    assert info.value.line == 9
    assert parse(registry, ["naive", "replay"])  # the others are unaffected
    assert any(re.search(message, problem) for problem in registry.load_installed())


@dataclasses.dataclass
class ExoticConfig:
    """Config field types no YAML value is read into (validate crashed on them with a TypeError)."""

    layers: tuple = (1, 2)


@dataclasses.dataclass
class MappingConfig:
    weights: dict = dataclasses.field(default_factory=dict)


@pytest.mark.parametrize("config_cls, named", [(ExoticConfig, "tuple (field 'layers')"), (MappingConfig, "dict (field 'weights')")])
def test_a_config_field_no_value_can_be_read_into_is_refused_where_the_strategy_is_named(l2anchor, config_cls, named):
    info = dataclasses.replace(l2anchor.L2_ANCHOR, name="exotic", config_cls=config_cls)
    registry = default_registry(installed=False)
    with pytest.raises(ValueError, match=re.escape(f"its config_cls has a field of type {named}, which a config value cannot")):
        registry.register(info)
    assert all(not info_problem(built_in) for built_in in registry)  # every built-in config is readable


def test_an_import_failure_says_what_was_looked_for_and_how_to_make_it_importable(l2anchor):
    registry = default_registry(installed=False)
    with pytest.raises(ConfigError) as info:
        parse(registry, ["naive", {"my_pkg_27.strategies:MINE": {"lam": 1}}])
    assert "no module named 'my_pkg_27'" in info.value.message and "looked for 'MINE' in module 'my_pkg_27.strategies'" in info.value.message
    assert "pip install" in info.value.hint and "PYTHONPATH" in info.value.hint
    with pytest.raises(ConfigError, match="has no 'L2_ANCHR'") as info:
        parse(registry, ["naive", "l2anchor:L2_ANCHR"])
    assert "did you mean 'L2_ANCHOR'" in info.value.hint


def test_a_user_strategy_named_like_a_registered_one_is_refused(l2anchor, monkeypatch):
    monkeypatch.setattr(l2anchor, "CLASH", dataclasses.replace(l2anchor.L2_ANCHOR, name="ewc"), raising=False)
    with pytest.raises(ConfigError, match="is called 'ewc', as a registered strategy is"):
        parse(default_registry(installed=False), ["naive", "l2anchor:CLASH"])


def test_its_parameters_are_searched_within_their_bounds(l2anchor):
    registry = installed(("l2anchor", GROUP_POINT))
    specs = parse(registry, ["naive", "l2anchor"])
    plan = parse_search({"spaces": {"l2anchor": {"lam": {"low": 0.01, "high": 10, "log": True}}}}, specs, Source(), True)
    assert plan.spaces["l2anchor"]["lam"].high == 10
    with pytest.raises(ConfigError, match="must be >= 0.0"):
        parse_search({"spaces": {"l2anchor": {"lam": {"choice": [0.1, -1]}}}}, specs, Source(), True)
    plain = parse(registry, [{"name": "raw", "plugins": [{"avalanche.training.plugins:EWCPlugin": {"ewc_lambda": 1}}]}])
    with pytest.raises(ConfigError, match="does not take 'ewc_lambda'") as info:
        parse_search({"spaces": {"raw": {"ewc_lambda": {"low": 1, "high": 2}}}}, plain, Source(), True)
    assert "StrategyInfo" in info.value.hint


def test_strategies_lists_an_installed_package_with_where_it_comes_from(tmp_path):
    """A copy of the example installed under another name (a dist-info on the path, as pip leaves it) is listed."""
    site = tmp_path / "site"
    shutil.copytree(EXAMPLE / "l2anchor", site / "l2pull")
    info = site / "cl_harness_l2pull-0.2.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: cl-harness-l2pull\nVersion: 0.2.0\n")
    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nl2pull = l2pull:L2_PULL\n")
    module = site / "l2pull" / "__init__.py"
    module.write_text(module.read_text() + '\nimport dataclasses\nL2_PULL = dataclasses.replace(L2_ANCHOR, name="l2pull")\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO)])}
    done = subprocess.run([sys.executable, "-m", "cl_harness", "strategies"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    line = next(line for line in done.stdout.splitlines() if line.startswith("l2pull:"))
    assert "(from package cl-harness-l2pull 0.2.0)" in line and "an L2 pull" in line
    assert "    lam (a number, default 1.0): weight of the penalty" in done.stdout

    (info / "entry_points.txt").write_text(f"[{ENTRY_POINT_GROUP}]\nreplay = l2pull:L2_PULL\n")
    done = subprocess.run([sys.executable, "-m", "cl_harness", "strategies"], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "'replay' is claimed twice: by cl-harness (built in) and by package cl-harness-l2pull 0.2.0" in done.stderr


# --- cl_harness.testing -------------------------------------------------------------------------------------------


def test_the_example_strategy_passes_the_checks(l2anchor, tmp_path):
    check = check_strategy(l2anchor.L2_ANCHOR, folder=tmp_path)
    assert check.resumed_matrix == check.matrix != check.naive_matrix
    assert check.matrix[0] == check.naive_matrix[0]  # it declares naive_prefix_tasks=1


class Forgetful:
    """An L2 anchor whose anchor is left out of its pickled state, as state kept outside the plugin would be."""

    def __getstate__(self):
        return {**self.__dict__, "anchor": {}}


def test_the_checks_fail_a_strategy_that_does_nothing_or_whose_state_a_checkpoint_loses(l2anchor, tmp_path):
    from avalanche.core import SupervisedPlugin

    info = l2anchor.L2_ANCHOR
    idle = dataclasses.replace(info, name="idle", build=lambda config, context: [SupervisedPlugin()])
    with pytest.raises(StrategyCheckError, match="'idle': at these parameters .* it trains exactly as naive does"):
        check_strategy(idle, folder=tmp_path / "idle")

    forgetful_class = type("ForgetfulAnchor", (Forgetful, l2anchor.L2Anchor), {"__module__": __name__})
    globals()["ForgetfulAnchor"] = forgetful_class  # pickled by reference, as a module-level class is
    forgetful = dataclasses.replace(info, name="forgetful", build=lambda config, context: [forgetful_class(config.lam)])
    with pytest.raises(StrategyCheckError, match="stopped after task 1 and resumed, it ends with"):
        check_strategy(forgetful, folder=tmp_path / "forgetful")


class RaisesAfterTask:
    """A plugin whose hook raises, as a bug in a user's strategy would."""

    def after_training_exp(self, strategy, **kwargs):
        raise ValueError("anchor shape mismatch")


class KeepsAGenerator:
    """A plugin that takes on state a checkpoint cannot pickle once it has trained a task."""

    def after_training_exp(self, strategy, **kwargs):
        self.pending = (step for step in range(3))


def test_the_checks_fail_a_strategy_that_raises_or_whose_state_cannot_be_saved(l2anchor, tmp_path):
    # Both got through check_strategy as the raw ValueError and torch.save's TypeError.
    from avalanche.core import SupervisedPlugin

    info = l2anchor.L2_ANCHOR
    for mixin, finding in ((RaisesAfterTask, r"its run on a tiny encoder model raised ValueError: anchor shape mismatch "
                                             r"\(raised at .*test_user_strategies.py:\d+ in after_training_exp\)"),
                           (KeepsAGenerator, r"its run with a checkpoint after each task failed: cannot save the checkpoint: "
                                             r"KeepsAGeneratorPlugin.pending holds a generator, which cannot be pickled")):
        plugin = type(f"{mixin.__name__}Plugin", (mixin, SupervisedPlugin), {"__module__": __name__})
        globals()[plugin.__name__] = plugin  # pickled by reference, as a module-level class is
        broken = dataclasses.replace(info, name=mixin.__name__.lower(), build=lambda config, context, plugin=plugin: [*info.build(config, context), plugin()])
        with pytest.raises(StrategyCheckError, match=finding):
            check_strategy(broken, folder=tmp_path / mixin.__name__)


def test_strategy_info_is_the_public_definition():
    import cl_harness.strategies as public

    assert public.StrategyInfo is StrategyInfo and {"StrategyInfo", "BuildContext"} <= set(public.__all__)


def test_the_tutorial_shows_the_example_package_as_it_is():
    import re as regex

    tutorial = (REPO / "docs" / "tutorial" / "own-strategy.md").read_text(encoding="utf-8")
    blocks = dict(regex.findall(r"```(python|toml)\n(.*?)```", tutorial, regex.S)[:2])
    assert blocks["python"] in (EXAMPLE / "l2anchor" / "__init__.py").read_text(encoding="utf-8")
    assert blocks["toml"] in (EXAMPLE / "pyproject.toml").read_text(encoding="utf-8")


def test_the_checks_name_an_unknown_strategy_and_a_bad_parameter_as_the_caller_wrote_them(tmp_path):
    # A bare KeyError, and a message about the check's own generated experiment.yaml.
    with pytest.raises(StrategyCheckError, match=r"no strategy named 'ewcc'; registered: .* \(did you mean 'ewc'\?\)"):
        check_strategy("ewcc", folder=tmp_path)
    with pytest.raises(StrategyCheckError, match=r"'ewc': its params are refused: params.ewc_lamda: unknown key; .*did you mean 'ewc_lambda'"):
        check_strategy("ewc", {"ewc_lamda": 3}, folder=tmp_path)
