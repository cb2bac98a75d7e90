"""The docs stay true to the code: docs/strategies.md against the strategy registry, the README's experiment YAML
against the config dataclasses, and the import contract against the strategy modules. No model is loaded."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import yaml

from cl_harness import strategies as strategy_package
from cl_harness.config.experiment import ExperimentConfig
from cl_harness.strategies import default_registry
from cl_harness.strategies.generative import backbone_kinds

REPO = Path(__file__).resolve().parents[1]
STRATEGIES_MD = REPO / "docs" / "strategies.md"
ALL_SCENARIOS = {"class_incremental", "task_incremental", "domain_incremental"}
#: The family word of docs/strategies.md's overview for each tuple of cl_harness/strategies/__init__.py.
FAMILIES = {
    "baseline": strategy_package.BASELINE_MODULES,
    "regularisation": strategy_package.REGULARIZATION_MODULES,
    "rehearsal": strategy_package.REHEARSAL_MODULES,
    "parameter-efficient": strategy_package.PARAMETER_EFFICIENT_MODULES,
}

SECTION = re.compile(r"^### `(\w+)`[ \t]*$", re.M)
HEADING = re.compile(r"^#{1,3} ", re.M)
PARAM_ROW = re.compile(r"^\| `(\w+)` \| `([^`]*)` \|", re.M)
OVERVIEW_ROW = re.compile(
    r"^\| \[`(\w+)`\]\(#[\w-]+\) \| ([^|]+?) \| ([^|]+?) \| `(\w+)` \| ([^|]+?) \| (yes|no) \|[ \t]*$", re.M
)


def doc_value(text: str):
    """A default as the docs write it (YAML: ``null``, ``[query, value]``, ``5e-5``) as a Python value."""
    value = yaml.safe_load(text)
    if isinstance(value, str):  # YAML 1.1 reads 5e-5 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            return value
    return value


def same_value(doc, code) -> bool:
    if isinstance(doc, bool) or isinstance(code, bool):
        return type(doc) is type(code) and doc == code
    return doc == code


def field_default(fld: dataclasses.Field):
    if fld.default is not dataclasses.MISSING:
        return fld.default
    if fld.default_factory is not dataclasses.MISSING:
        return fld.default_factory()
    return dataclasses.MISSING


def sections(text: str) -> dict[str, str]:
    """``### `name` `` section bodies, each up to the next heading."""
    found = {}
    for match in SECTION.finditer(text):
        end = HEADING.search(text, match.end())
        found[match.group(1)] = text[match.end() : end.start() if end else len(text)]
    return found


def strategy_doc_problems(text: str, registry=None) -> list[str]:
    """What docs/strategies.md gets wrong about the registry: missing or extra strategies and parameters, wrong
    defaults, and overview rows whose family, scenarios, training data, backbones or prefix sharing differ."""
    registry = registry if registry is not None else default_registry(installed=False)
    problems = []
    documented = sections(text)
    names = registry.names()
    problems += [f"{name}: no section" for name in names if name not in documented]
    problems += [f"{name}: documented but not registered" for name in documented if name not in names]
    for name in names:
        if name not in documented:
            continue
        fields = [f for f in dataclasses.fields(registry.get(name).config_cls) if f.init]
        rows = {param: default for param, default in PARAM_ROW.findall(documented[name])}
        for fld in fields:
            if fld.name not in rows:
                problems.append(f"{name}.{fld.name}: parameter not documented")
            elif not same_value(doc_value(rows[fld.name]), field_default(fld)):
                problems.append(f"{name}.{fld.name}: docs say default {rows[fld.name]!r}, the code {field_default(fld)!r}")
        problems += [f"{name}.{param}: documented but not a parameter" for param in rows if param not in {f.name for f in fields}]
        if not fields and "No parameters." not in documented[name]:
            problems.append(f"{name}: takes no parameters; its section should say 'No parameters.'")
    family_of = {module.INFO.name: family for family, modules in FAMILIES.items() for module in modules}
    overview = {row[0]: row[1:] for row in OVERVIEW_ROW.findall(text)}
    for info in registry:
        if info.name not in overview:
            problems.append(f"{info.name}: no overview row")
            continue
        family, scenarios, train_data, backbones, shares = overview[info.name]
        want_scenarios = "all" if set(info.scenarios) == ALL_SCENARIOS else ", ".join(f"`{s}`" for s in info.scenarios)
        checks = {
            "family": (family, family_of.get(info.name)),
            "scenarios": (scenarios, want_scenarios),
            "training data": (train_data, info.train_data),
            "backbones": (backbones, ", ".join(backbone_kinds(info.name))),
            "shares task 1": (shares, "yes" if info.naive_prefix_tasks >= 1 else "no"),
        }
        problems += [f"{info.name}: overview {what} is {doc!r}, the code says {code!r}" for what, (doc, code) in checks.items() if doc != code]
    problems += [f"{name}: overview row but not registered" for name in overview if name not in names]
    return problems


def test_strategies_md_describes_every_registered_strategy_with_its_parameters_and_defaults():
    assert strategy_doc_problems(STRATEGIES_MD.read_text(encoding="utf-8")) == []


def test_the_strategies_md_check_sees_a_missing_strategy_a_missing_parameter_and_a_wrong_default():
    text = STRATEGIES_MD.read_text(encoding="utf-8")
    doctored = text.replace("| `ewc_lambda` | `1000.0` |", "| `ewc_lambda` | `999` |", 1)
    doctored = re.sub(r"^\| `sample_size` \|.*\n", "", doctored, count=1, flags=re.M)
    doctored = doctored.replace("### `gdumb`", "### `gdumb_renamed`", 1)
    doctored = doctored.replace("| [`mir`](#mir) | rehearsal | all |", "| [`mir`](#mir) | rehearsal | `class_incremental` |", 1)
    assert doctored.count("\n") < text.count("\n")  # the row was there to remove
    problems = "\n".join(strategy_doc_problems(doctored))
    assert "ewc.ewc_lambda: docs say default '999'" in problems
    assert "agem.sample_size: parameter not documented" in problems
    assert "gdumb: no section" in problems and "gdumb_renamed: documented but not registered" in problems
    assert "mir: overview scenarios" in problems


def test_doc_values_read_as_the_config_would():
    assert doc_value("5e-5") == 5e-5 and doc_value("null") is None and doc_value("[query, value]") == ["query", "value"]
    assert doc_value("reservoir") == "reservoir" and not same_value(doc_value("1"), True)


# --- the README's experiment YAML -----------------------------------------------------------------------------------

KEY_LINE = re.compile(r"^(?P<indent> *)(?P<commented># *)?(?P<key>\w+):(?: (?P<value>[^#]*?))?\s*(?:# ?(?P<comment>.*))?$")
EXAMPLE_DEFAULT = re.compile(r"example; default (\[[^\]]*\]|[^\s.;(]+(?:\.\d+)?)")
SECTIONS = ("backbone", "training", "tracking")


def experiment_block() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("```yaml\n", readme.index("## Experiment YAML")) + len("```yaml\n")
    return readme[start : readme.index("```", start)]


def experiment_block_problems(block: str) -> tuple[list[str], set[str]]:
    """Values the README shows as defaults that are not, and the dotted keys the block names (commented ones too)."""
    defaults = {f.name: f for f in dataclasses.fields(ExperimentConfig)}
    nested = {name: {f.name: f for f in dataclasses.fields(type(field_default(defaults[name])))} for name in SECTIONS}
    problems, seen, section = [], set(), None
    for line in block.splitlines():
        match = KEY_LINE.match(line)
        if match is None:
            continue
        indent, key, value, comment = len(match["indent"]), match["key"], match["value"], match["comment"] or ""
        if indent == 0:
            section = key if not value else None
            fields, dotted = defaults, key
        elif section in SECTIONS and indent == 2:
            fields, dotted = nested[section], f"{section}.{key}"
        else:
            continue  # inside strategies: examples of specs
        if key not in fields:
            problems.append(f"{dotted}: not a key of the experiment config")
            continue
        seen.add(dotted)
        if match["commented"]:
            continue
        default = field_default(fields[key])
        if default is dataclasses.MISSING:
            if "(required)" not in comment:
                problems.append(f"{dotted}: required, the comment should say (required)")
            continue
        example = EXAMPLE_DEFAULT.search(comment)
        if example:
            shown = example.group(1)
        elif value:
            shown = value
        else:
            continue  # a section (backbone:, training:, ...)
        if not same_value(doc_value(shown), default):
            problems.append(f"{dotted}: shown as default {shown!r}, the code's default is {default!r}")
    return problems, seen


def test_the_readme_experiment_yaml_shows_defaults_as_defaults_and_names_every_key():
    problems, seen = experiment_block_problems(experiment_block())
    assert problems == []
    defaults = {f.name: f for f in dataclasses.fields(ExperimentConfig)}
    wanted = set(defaults)
    for name in SECTIONS:
        wanted |= {f"{name}.{f.name}" for f in dataclasses.fields(type(field_default(defaults[name])))}
    assert sorted(wanted - seen) == []  # commented keys count: e.g. `# peft:`, detailed in its own section


def test_the_experiment_yaml_check_sees_an_example_shown_as_a_default():
    block = "training:\n  lr: 1e-4\n  max_length: 48                  # example; default 128. Tokens\nseeds: [0]\n"
    problems, seen = experiment_block_problems(block)
    assert problems == ["training.lr: shown as default '1e-4', the code's default is 5e-05"]
    assert seen == {"training", "training.lr", "training.max_length", "seeds"}


def test_the_readme_links_the_strategy_reference():
    assert "docs/strategies.md" in (REPO / "README.md").read_text(encoding="utf-8")


# --- the import contract ----------------------------------------------------------------------------------------------


def contract_problems(listed: list[str]) -> list[str]:
    """Registered strategy modules the independence contract leaves out, and modules it lists that are none."""
    registered = {module.__name__ for modules in FAMILIES.values() for module in modules}
    return [f"{name}: not in the contract" for name in sorted(registered - set(listed))] + [
        f"{name}: in the contract but not a registered strategy module" for name in sorted(set(listed) - registered)
    ]


def test_the_import_contract_keeps_every_strategy_module_apart_from_its_siblings():
    tomllib = pytest.importorskip("tomllib")
    contracts = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["importlinter"]["contracts"]
    (contract,) = [c for c in contracts if "cl_harness.strategies.naive" in c.get("modules", [])]
    assert {module.INFO.name for modules in FAMILIES.values() for module in modules} == set(default_registry(installed=False).names())
    assert contract_problems(contract["modules"]) == []


def test_the_contract_check_sees_a_module_left_out():
    listed = [module.__name__ for modules in FAMILIES.values() for module in modules if module.__name__ != "cl_harness.strategies.in_context"]
    assert contract_problems(listed + ["cl_harness.strategies.gone"]) == [
        "cl_harness.strategies.in_context: not in the contract",
        "cl_harness.strategies.gone: in the contract but not a registered strategy module",
    ]
