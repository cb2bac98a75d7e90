"""The docs site's reference is written from the code: every CLI command and option, every experiment and stream key,
every registered strategy with its parameters, every MLflow name, every exit code and every column of the comparison table
is in the generated pages, and each check sees one left out. Also: the pages name no lab history, and the strategy module
of "Extend cl-harness" imports as it is printed."""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from pathlib import Path

import pytest

from cl_harness import cli
from cl_harness import docs_reference as ref
from cl_harness.config.experiment import ExperimentConfig
from cl_harness.config.stream import StreamConfig
from cl_harness.search.config import ParamSpace, SearchConfig
from cl_harness.strategies import default_registry
from cl_harness.tracking import schema

REPO = Path(__file__).resolve().parents[1]
HEADING = re.compile(r"^#{2,3} (?:`(?P<code>[^`]+)`|(?P<text>[^{]+?))\s*(?:\{#[\w-]+\})?\s*$")
ROW = re.compile(r"^\| `([^`]+)`")


def sections(markdown: str) -> dict[str, list[str]]:
    """``{heading: first cells of the table rows under it}``, code cells only."""
    found: dict[str, list[str]] = {"": []}
    current = ""
    for line in markdown.splitlines():
        heading = HEADING.match(line)
        if heading:
            current = heading["code"] or heading["text"]
            found.setdefault(current, [])
        elif ROW.match(line):
            found[current].append(ROW.match(line)[1])
    return found


def drop_line(markdown: str, pattern: str) -> str:
    """``markdown`` without the first line matching ``pattern`` (which must be there)."""
    doctored = re.sub(pattern + r".*\n", "", markdown, count=1, flags=re.M)
    assert doctored != markdown, f"nothing to remove for {pattern!r}"
    return doctored


# --- the command line --------------------------------------------------------------------------------------------------


def cli_problems(markdown: str) -> list[str]:
    """Commands without a section, and options of a command missing from its table."""
    parser = cli.build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    documented = sections(markdown)
    problems = []
    for name, command in [("cl-harness", parser), *((f"cl-harness {n}", c) for n, c in commands.choices.items())]:
        if name not in documented:
            problems.append(f"{name}: no section")
            continue
        words = {word.rstrip(",") for cell in documented[name] for word in cell.split()}
        for action in command._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            wanted = action.option_strings or [action.metavar or action.dest.upper()]
            problems += [f"{name}: {option} not documented" for option in wanted if option not in words]
    return problems


def test_the_cli_reference_lists_every_command_and_option():
    assert cli_problems(ref.cli_reference()) == []


def test_the_cli_check_sees_a_missing_command_and_a_missing_option():
    text = ref.cli_reference()
    assert cli_problems(drop_line(text, r"^## `cl-harness ui`")) == ["cl-harness ui: no section"]
    assert cli_problems(drop_line(text, r"^\| `--verbose`")) == ["cl-harness: --verbose not documented"]
    assert cli_problems(drop_line(text, r"^\| `--max-retries")) == ["cl-harness run: --max-retries not documented"]


# --- experiment and stream keys ------------------------------------------------------------------------------------------


def _nested(tp) -> tuple[type | None, bool]:
    """The dataclass a field holds (directly, optionally or in a list), and whether in a list."""
    if dataclasses.is_dataclass(tp):
        return tp, False
    for arg in typing.get_args(tp):
        found, _ = _nested(arg)
        if found is not None:
            return found, typing.get_origin(tp) is list
    return None, False


def config_keys(cls: type, prefix: str = "") -> set[str]:
    """Every key path of a config class, nested sections included (``tasks[].source.type``)."""
    keys, hints = set(), typing.get_type_hints(cls)
    for fld in dataclasses.fields(cls):
        if fld.init:
            keys.add(prefix + fld.name)
            nested, listed = _nested(hints[fld.name])
            if nested is not None:
                keys |= config_keys(nested, f"{prefix}{fld.name}{'[]' if listed else ''}.")
    return keys


def documented_keys(markdown: str, root: str) -> set[str]:
    return {(f"{section}.{key}" if section != root else key) for section, rows in sections(markdown).items() for key in rows}


EXPERIMENT_KEYS = config_keys(ExperimentConfig) | config_keys(SearchConfig, "search.") | config_keys(
    ParamSpace, "search.spaces.<strategy>.<parameter>.")
STREAM_KEYS = config_keys(StreamConfig)


def test_the_experiment_and_stream_references_list_every_key():
    assert sorted(EXPERIMENT_KEYS - documented_keys(ref.experiment_reference(), "experiment")) == []
    assert sorted(STREAM_KEYS - documented_keys(ref.stream_reference(), "stream")) == []
    assert {"training.lr", "backbone.peft.lora_rank", "tasks[].source.train_file", "tasks[].instruction.template"} <= (
        EXPERIMENT_KEYS | STREAM_KEYS)


def test_the_key_check_sees_a_missing_key():
    text = drop_line(ref.experiment_reference(), r"^\| `max_length`")
    assert sorted(EXPERIMENT_KEYS - documented_keys(text, "experiment")) == ["training.max_length"]


def test_every_key_has_help_for_the_reference():
    def unhelped(cls: type, seen: set) -> list[str]:
        hints, out = typing.get_type_hints(cls), []
        for fld in dataclasses.fields(cls):
            out += [] if fld.metadata.get("help") or not fld.init else [f"{cls.__name__}.{fld.name}"]
            nested, _ = _nested(hints[fld.name])
            if nested is not None and nested not in seen:
                seen.add(nested)
                out += unhelped(nested, seen)
        return out

    assert [name for root in (ExperimentConfig, StreamConfig, SearchConfig, ParamSpace) for name in unhelped(root, set())] == []


# --- strategies --------------------------------------------------------------------------------------------------------


def strategy_problems(markdown: str) -> list[str]:
    """Registered strategies without a section, parameters missing from their table, and overview rows missing."""
    documented = sections(markdown)
    problems = []
    for info in default_registry():
        if info.name not in documented:
            problems.append(f"{info.name}: no section")
            continue
        params = [f.name for f in dataclasses.fields(info.config_cls) if f.init]
        problems += [f"{info.name}.{p}: not documented" for p in params if p not in documented[info.name]]
        if f"| [`{info.name}`](#" not in markdown:
            problems.append(f"{info.name}: no overview row")
    return problems


def test_the_strategy_catalogue_lists_every_registered_strategy_and_parameter():
    text = ref.strategy_reference()
    assert strategy_problems(text) == []
    assert "No parameters." in text and "| `ewc_lambda` | a number | `1000.0` | ≥ 0.0 |" in text


def test_the_strategy_check_sees_a_missing_strategy_and_a_missing_parameter():
    text = drop_line(drop_line(ref.strategy_reference(), r"^### `gdumb`"), r"^\| `sample_size`")
    assert strategy_problems(text) == ["agem.sample_size: not documented", "gdumb: no section"]


def test_the_catalogue_lists_each_strategys_declared_backbone_kinds():
    from cl_harness.strategies import default_registry

    text = ref.strategy_reference()
    for info in default_registry():
        section = text[text.index(f"`{info.name}`"):]
        assert ", ".join(info.backbone_kinds) in section[:4000], info.name


# --- MLflow names and exit codes -----------------------------------------------------------------------------------------


def schema_names() -> set[str]:
    """Every store name tracking/schema.py defines as a public string (or tuple of strings) constant."""
    names = set()
    for name, value in vars(schema).items():
        if not name.startswith("_") and name.isupper():
            names |= {value} if isinstance(value, str) else set(value) if isinstance(value, tuple) and all(isinstance(v, str) for v in value) else set()
    return names


def mlflow_problems(markdown: str) -> list[str]:
    cells = {part.strip() for rows in sections(markdown).values() for cell in rows for part in cell.split(",")}
    return sorted(f"{name}: not documented" for name in schema_names() - cells)


def test_the_mlflow_reference_lists_every_store_name():
    text = ref.mlflow_reference()
    assert mlflow_problems(text) == []
    assert "| `acc/<task>` | `task_acc_metric()` |" in text and "| `<label>/seed<k>/order<m>` | `run_name()` |" in text


def test_the_mlflow_check_sees_a_missing_name():
    assert mlflow_problems(drop_line(ref.mlflow_reference(), r"^\| `report.html`")) == ["report.html: not documented"]


def test_the_exit_code_reference_lists_every_code_the_cli_defines():
    codes = {value for name, value in vars(cli).items() if name.startswith("EXIT_")}
    assert {int(c) for c in re.findall(r"^\| `(\d+)` \|", ref.exit_code_reference(), re.M)} == codes == {0, 1, 2, 3, 130}


# --- the comparison table's columns ----------------------------------------------------------------------------------------


def comparison_table(strategies: tuple[str, ...] = ("naive", "replay", "ewc"), seeds: int = 3):
    """A comparison table as the code builds it, with every statistics column computed (three seeds per strategy)."""
    from cl_harness.report.compare import Comparison
    from cl_harness.tracking.reader import ChildRun

    runs = [ChildRun(f"id-{name}-{seed}", f"{name}/seed{seed}/order0", "FINISHED", name, seed, 0, {"acc": acc, "forgetting": 0.1},
                     ["t1", "t2"], [0.0, 0.0], [[0.9, 0.0], [acc, acc]])
            for i, name in enumerate(strategies) for seed, acc in enumerate((0.3 + 0.2 * i, 0.35 + 0.2 * i, 0.32 + 0.2 * i)[:seeds])]
    return Comparison("e", "1", "p", "parent", "FINISHED", None, "sqlite://", runs).table()


def column_problems(markdown: str) -> list[str]:
    documented = re.findall(r"^\| `([^`]+)` \| (.+) \|$", markdown, re.M)
    names = [name for name, _ in documented]
    problems = [f"{column}: not documented" for column in comparison_table().columns if column not in names]
    problems += [f"{name}: no meaning" for name, meaning in documented if len(meaning.strip()) < 10]
    return problems


def test_the_comparison_columns_reference_lists_every_column_of_the_table_in_order():
    text = ref.comparison_columns_reference()
    assert column_problems(text) == []
    table = comparison_table()
    assert re.findall(r"^\| `([^`]+)`", text, re.M) == list(table.columns)
    assert {"acc_ci_method", "test_vs_best", "mdd_vs_best", "seeds_to_resolve", "inert", "nfr_mean"} <= set(table.columns)
    assert table["acc_ci_method"].iloc[0] == "t" and "'t' (Student t-interval" in text  # the values the meanings name
    assert set(table["test_vs_naive"]) == {"paired_t", "none"} and "'paired_t' (paired t-test)" in text


def test_the_columns_check_sees_a_missing_column_and_the_generator_a_column_without_meaning(monkeypatch):
    assert column_problems(drop_line(ref.comparison_columns_reference(), r"^\| `seeds_to_resolve`")) == ["seeds_to_resolve: not documented"]
    monkeypatch.setattr(ref, "comparison_columns", lambda: ["strategy", "new_column"])
    with pytest.raises(KeyError, match="new_column"):
        ref.comparison_columns_reference()


# --- examples on the pages -----------------------------------------------------------------------------------------------


def python_blocks(page: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", (REPO / "docs" / page).read_text(encoding="utf-8"), re.S | re.M)


def test_the_extending_pages_strategy_is_a_module_that_registers(tmp_path, monkeypatch):
    """The strategy of "Add a strategy", pasted into a file as it is, imports, registers, parses its parameters and builds a
    plugin that pickles (as checkpoints pickle it); training it is tests/test_extending.py's."""
    import importlib
    import pickle

    from cl_harness.config.schema import parse
    from cl_harness.strategies.registry import info_problem

    (code,) = [block for block in python_blocks("extending.md") if "INFO = StrategyInfo(" in block]
    (tmp_path / "docs_l2_sp.py").write_text(code, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("docs_l2_sp")
    info = module.INFO
    assert info_problem(info) is None
    registry = default_registry()
    registry.register(info)
    assert registry.get("l2_sp") is info and set(info.backbone_kinds) == {"encoder", "causal_lm", "seq2seq"}
    assert info.naive_prefix_tasks == 0  # its pull acts on task 1, as the page says
    plugins = info.build(parse(info.config_cls, {"lam": 0.5}), None)
    assert [type(p).__name__ for p in plugins] == ["L2SP"] and plugins[0].lam == 0.5
    assert pickle.loads(pickle.dumps(plugins[0])).lam == 0.5


def test_the_tutorials_strategy_module_is_the_example_packages():
    (code,) = [block for block in python_blocks("tutorial/own-strategy.md") if "L2_ANCHOR = StrategyInfo(" in block]
    assert code == (REPO / "examples" / "l2anchor" / "l2anchor" / "__init__.py").read_text(encoding="utf-8")


# --- the pages ---------------------------------------------------------------------------------------------------------


def test_every_generated_section_is_on_a_page_and_every_marker_is_known():
    markers = [m for page in sorted((REPO / "docs").rglob("*.md")) for m in ref.MARKER.findall(page.read_text(encoding="utf-8"))]
    assert sorted(markers) == sorted(ref.GENERATORS)
    assert "cl_harness/docs_reference.py" in (REPO / "mkdocs.yml").read_text(encoding="utf-8")
    with pytest.raises(ValueError, match="unknown generated section 'clli'"):
        ref.fill("<!-- generated: clli -->")
    assert ref.fill("a\n<!-- generated: exit-codes -->\nb").startswith("a\n| exit code | meaning |")


LAB_NOTEBOOK = re.compile(r"\bsessions?\b|\bissue[s]? \d|\bissue-\d|\bat commit\b|not (been )?re-run|\bthis session\b", re.I)


def test_the_docs_speak_to_users_not_of_their_history():
    pages = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
    found = [f"{page.relative_to(REPO)}: {m[0]!r}" for page in pages for m in LAB_NOTEBOOK.finditer(page.read_text(encoding="utf-8"))]
    assert found == []


def test_the_readme_fits_on_two_screens():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 150
