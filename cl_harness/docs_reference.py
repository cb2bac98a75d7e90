"""The reference pages of the docs site, written from the code when the site is built (mkdocs.yml loads this file as
a hook). A page under docs/reference/ holds prose and markers like ``<!-- generated: cli -->``; each marker becomes
the tables its generator writes: the CLI from the argument parser, the YAML keys from the config dataclasses, the
strategy catalogue from the registry, the MLflow names from tracking/schema.py and the exit codes from cli.py.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import json
import re
import tokenize
import types
import typing
from typing import Any, Union

MARKER = re.compile(r"<!-- generated: ([\w-]+) -->")


# --- markdown helpers ------------------------------------------------------------------------------


def cell(text: Any) -> str:
    """One table cell: on one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def table(header: tuple[str, ...], rows: list[tuple]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(map(cell, r)) + " |" for r in rows), ""]


def anchor(path: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", path.lower()).strip("-")


def yaml_value(value: Any) -> str:
    """A default as one would write it in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(map(yaml_value, value)) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and (not value or "\n" in value):
        return json.dumps(value)
    return str(value)


# --- the command line --------------------------------------------------------------------------------


def _argument_rows(parser: argparse.ArgumentParser) -> list[tuple[str, str, str]]:
    rows = []
    for action in parser._actions:  # argparse has no public way to list a parser's arguments
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        metavar = action.metavar or ("{" + ",".join(map(str, action.choices)) + "}" if action.choices else action.dest.upper())
        if action.option_strings:
            name = ", ".join(action.option_strings) + (f" {metavar}" if action.nargs != 0 else "")
        else:
            name = action.metavar or action.dest.upper()
        default = action.default if action.default not in (None, False, [], argparse.SUPPRESS) else ""
        help_text = action.help or ""
        if isinstance(action, argparse._VersionAction):
            help_text, default = "print the version and exit", ""
        rows.append((f"`{name}`", f"`{default}`" if default != "" else "", help_text))
    return rows


def cli_reference() -> str:
    """Every command of ``cl-harness`` with its usage line and every argument's default and help."""
    from cl_harness.cli import build_parser

    parser = build_parser()
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    summaries = {a.dest: a.help for a in commands._choices_actions}
    lines = ["## `cl-harness` {#cl-harness}", "", "Options given before the command, e.g. `cl-harness --debug run EXP.yaml`.", ""]
    lines += table(("option", "default", "what it does"), _argument_rows(parser))
    for name, command in commands.choices.items():
        command.formatter_class = lambda prog: argparse.HelpFormatter(prog, width=100)
        usage = command.format_usage().strip().removeprefix("usage: ")
        lines += [f"## `cl-harness {name}` {{#{anchor(name)}}}", "", f"{summaries[name][0].upper()}{summaries[name][1:]}.", "", "```", usage, "```", ""]
        lines += table(("argument", "default", "what it does"), _argument_rows(command))
    return "\n".join(lines)


# --- YAML keys --------------------------------------------------------------------------------------


def _nested_class(tp: Any) -> tuple[type | None, str]:
    """The dataclass a field holds, directly, optionally or as list items (with the path suffix ``[]``)."""
    if dataclasses.is_dataclass(tp):
        return tp, ""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            found = _nested_class(arg)
            if found[0] is not None:
                return found
    if origin is list:
        nested, _ = _nested_class(typing.get_args(tp)[0])
        return nested, "[]"
    return None, ""


def config_sections(root: type, extra: dict[str, type] | None = None) -> list[tuple[str, type]]:
    """``(key path, dataclass)`` of every section reachable from ``root``; ``extra`` adds sections held in untyped fields."""
    found, pending = [], [("", root), *(extra or {}).items()]
    while pending:
        path, cls = pending.pop(0)
        found.append((path, cls))
        hints = typing.get_type_hints(cls)
        children = [(f.name, *_nested_class(hints[f.name])) for f in dataclasses.fields(cls) if f.init]
        pending[:0] = [(f"{path}.{name}{suffix}".lstrip("."), nested) for name, nested, suffix in children if nested is not None]
    return found


def _bounds(meta: typing.Mapping) -> str:
    return ", ".join(f"{word} {meta[key]}" for key, word in (("gt", ">"), ("ge", "≥"), ("lt", "<"), ("le", "≤")) if key in meta)


def config_reference(root: type, title: str, extra: dict[str, type] | None = None, notes: dict[str, str] | None = None) -> str:
    """One section per dataclass reachable from ``root``: every key with its type, default, bounds and help."""
    from cl_harness.config.schema import describe

    lines = []
    sections = config_sections(root, extra)
    paths = {cls: path for path, cls in sections}
    for path, cls in sections:
        lines += [f"## `{path or title}` {{#{anchor(path or title)}}}", "", (inspect.getdoc(cls) or "").split("\n\n")[0], ""]
        if path in (notes or {}):
            lines += [notes[path], ""]
        meta = {f.name: f.metadata for f in dataclasses.fields(cls)}
        rows = []
        for name, type_name, default, help_text in describe(cls):
            if dataclasses.is_dataclass(default):
                shown = f"see [`{paths[type(default)]}`](#{anchor(paths[type(default)])})"
            else:
                shown = "required" if default == "(required)" else f"`{yaml_value(default)}`"
            rows.append((f"`{name}`", type_name, shown, _bounds(meta[name]), help_text))
        lines += table(("key", "type", "default", "bounds", "what it sets"), rows)
    return "\n".join(lines)


def experiment_reference() -> str:
    from cl_harness.config.experiment import ExperimentConfig
    from cl_harness.search.config import ParamSpace, SearchConfig

    return config_reference(ExperimentConfig, "experiment", {"search": SearchConfig, "search.spaces.<strategy>.<parameter>": ParamSpace}, {
        "": "`strategies` takes names from the [strategy catalogue](strategies.md), each with its parameters.",
        "search.spaces.<strategy>.<parameter>": "A parameter is `training.lr`, `training.weight_decay`, `training.epochs`, "
        "`training.batch_size` or a parameter of the strategy (`<plugin>.<parameter>` when it has several plugins).",
    })


def stream_reference() -> str:
    from cl_harness.config.stream import SOURCE_KEYS, StreamConfig

    takes = "; ".join(f"`{kind}`: " + ", ".join(f"`{k}`" for k in sorted(keys)) for kind, keys in SOURCE_KEYS.items())
    return config_reference(StreamConfig, "stream", notes={"tasks[].source": f"Which keys each source type takes: {takes}."})


# --- strategies ------------------------------------------------------------------------------------


def strategy_families() -> dict[str, tuple]:
    """The built-in strategy modules by family, as cl_harness/strategies/__init__.py groups them."""
    from cl_harness import strategies as package

    return {"Baselines": package.BASELINE_MODULES, "Regularisation and distillation": package.REGULARIZATION_MODULES,
            "Rehearsal": package.REHEARSAL_MODULES, "Parameter-efficient": package.PARAMETER_EFFICIENT_MODULES}


def strategy_reference() -> str:
    """An overview table, then every strategy: what it does, where it runs, and each parameter."""
    from cl_harness.config.schema import describe
    from cl_harness.strategies import default_registry
    from cl_harness.strategies.registry import ALL_SCENARIOS

    registry = default_registry()
    families = strategy_families()
    grouped = {family: [registry.get(m.INFO.name) for m in modules] for family, modules in families.items()}
    listed = {info.name for infos in grouped.values() for info in infos}
    if any(info.name not in listed for info in registry):
        grouped["Other"] = [info for info in registry if info.name not in listed]
    docs = {m.INFO.name: m.__doc__ for modules in families.values() for m in modules}

    def facts(info) -> tuple[str, str, str, str]:
        scenarios = "all" if set(info.scenarios) == set(ALL_SCENARIOS) else ", ".join(f"`{s}`" for s in info.scenarios)
        return scenarios, f"`{info.train_data}`", ", ".join(info.backbone_kinds), "yes" if info.naive_prefix_tasks >= 1 else "no"

    overview = [(f"[`{i.name}`](#{anchor(i.name)})", family.split()[0].lower(), i.summary, *facts(i)) for family, infos in grouped.items() for i in infos]
    lines = table(("strategy", "family", "what it does", "scenarios", "training data", "backbones", "shares task 1"), overview)
    for family, infos in grouped.items():
        lines += [f"## {family}", ""]
        for info in infos:
            scenarios, data, kinds, shares = facts(info)
            lines += [f"### `{info.name}` {{#{anchor(info.name)}}}", "", inspect.cleandoc(docs.get(info.name) or info.summary), ""]
            cited = info.paper and info.paper.split()[0] in (docs.get(info.name) or "")
            lines += [f"Paper: {info.paper}." if info.paper and not cited else "", "",
                      f"Scenarios: {scenarios}. Training data: {data}. Backbones: {kinds}. Shares task 1: {shares}.", ""]
            params = [(f"`{n}`", t, f"`{yaml_value(d)}`", _bounds(f.metadata), h)
                      for (n, t, d, h), f in zip(describe(info.config_cls), [f for f in dataclasses.fields(info.config_cls) if f.init])]
            lines += table(("parameter", "type", "default", "bounds", "what it sets"), params) if params else ["No parameters.", ""]
    return "\n".join(lines)


# --- the MLflow layout -------------------------------------------------------------------------------


def _comments(source: str) -> tuple[dict[int, str], set[int]]:
    """Line number -> the comment on that line, and the lines that hold nothing but a comment."""
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type == tokenize.COMMENT]
    return {t.start[0]: t.string.lstrip("#:").strip() for t in tokens}, {t.start[0] for t in tokens if not t.line[: t.start[1]].strip()}


def mlflow_reference() -> str:
    """Every name tracking/schema.py gives the store (tags, metrics, artifacts, run names), with its comment, by section."""
    from cl_harness.tracking import schema

    source = inspect.getsource(schema)
    comments, comment_lines = _comments(source)
    banners = {line: re.sub(r"\s*\(.*\)$", "", text.strip("- ")) for line, text in comments.items() if text.startswith("---")}
    sections: dict[str, list[tuple]] = {}

    def add(line: int, name: str, value: str, meaning: str) -> None:
        title = banners[max(b for b in banners if b < line)]
        sections.setdefault(title, []).append((f"`{value}`", f"`{name}`", meaning))

    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
            found = re.match(r"``([^`]+)``: (.*)", (ast.get_docstring(node) or "").split("\n")[0])
            if found:  # a name format: "``acc/<task>``: the per-step score ..."
                add(node.lineno, f"{node.name}()", found[1], found[2])
        if not isinstance(node, ast.Assign):
            continue
        names = [t.id for target in node.targets for t in (target.elts if isinstance(target, ast.Tuple) else [target])]
        above = comments[node.lineno - 1] if node.lineno - 1 in comment_lines and node.lineno - 1 not in banners else ""
        meaning = comments.get(node.end_lineno) or above
        for name in names:
            value = getattr(schema, name)
            if name.startswith("_") or not (isinstance(value, str) or (isinstance(value, tuple) and all(isinstance(v, str) for v in value))):
                continue
            add(node.lineno, name, ", ".join(value) if isinstance(value, tuple) else value, meaning)
    lines = []
    for title, rows in sections.items():
        lines += [f"## {title[0].upper()}{title[1:]}", ""] + table(("name", "in the code", "meaning"), rows)
    return "\n".join(lines)


# --- exit codes ----------------------------------------------------------------------------------------

EXIT_MEANINGS = {
    "EXIT_OK": "every run finished (or the command did what it was asked)",
    "EXIT_FAILED_RUNS": "at least one run failed while training, e.g. on a non-finite loss; the other runs still ran, and "
    "the failed one is FAILED in MLflow with its partial accuracy matrix",
    "EXIT_CONFIG": "a configuration or input error, reported in one message with file, line and key; nothing was trained or written",
    "EXIT_TRACKING": "the tracking store failed or cannot be used; the runs' checkpoints are kept: fix the store and run the same command again",
    "EXIT_INTERRUPTED": "interrupted (Ctrl-C or SIGTERM); the run in progress is KILLED in MLflow and keeps its last checkpoint",
}


def exit_code_reference() -> str:
    """The exit codes cli.py defines, each with what it means."""
    from cl_harness import cli

    codes = sorted((value, name) for name, value in vars(cli).items() if name.startswith("EXIT_"))
    return "\n".join(table(("exit code", "meaning"), [(f"`{value}`", EXIT_MEANINGS[name]) for value, name in codes]))


# --- the comparison table's columns --------------------------------------------------------------------------------------

IDENTITY_MEANINGS = {  # the comparison's first columns; the metrics' meanings are report/compare.py's DEFINITIONS
    "strategy": "the strategy's label in the experiment; rows are sorted by acc_mean, best first",
    "n_finished": "finished runs of the strategy (seeds x task orders); only these enter the means and the statistics",
    "n_runs": "all its planned runs in the comparison, finished or not",
}


def comparison_columns() -> list[str]:
    """The columns of ``Comparison.table()`` (``Results.comparison()``, ``comparison.csv``), from a table the code builds."""
    from cl_harness.report.compare import Comparison
    from cl_harness.tracking.reader import ChildRun

    run = ChildRun("id", "naive/seed0/order0", "FINISHED", "naive", 0, 0, {"acc": 0.5}, ["t1"], [0.0], [[0.5]])
    return list(Comparison("e", "1", "p", "parent", "FINISHED", None, "sqlite://", [run]).table().columns)


def comparison_column_meanings() -> dict[str, str]:
    """Every column of the comparison table with its meaning: IDENTITY_MEANINGS, the report's definition of each metric
    (``<metric>_mean``; ``<metric>_std`` its spread) and statistics.STAT_COLUMNS. KeyError for a column with none."""
    from cl_harness.report.compare import DEFINITIONS, PERCENT_METRICS, TABLE_METRICS
    from cl_harness.report.statistics import STAT_COLUMNS

    definitions = {name.strip(): text for key, text in DEFINITIONS.items() for name in key.split(" / ")}
    meanings = {**IDENTITY_MEANINGS, "inert": DEFINITIONS["inert"] + " Empty where the strategy acted.", **STAT_COLUMNS}
    for metric in TABLE_METRICS:
        unit = " (a fraction, not percent)" if metric in PERCENT_METRICS else ""
        meanings[f"{metric}_mean"] = f"mean over the finished runs of `{metric}`{unit}: {definitions[metric]}"
        meanings[f"{metric}_std"] = f"sample standard deviation (ddof=1) of `{metric}` over the finished runs; NaN for one run"
    missing = [column for column in comparison_columns() if column not in meanings]
    if missing:
        raise KeyError(f"comparison columns without a meaning: {', '.join(missing)}")
    return {column: meanings[column] for column in comparison_columns()}


def comparison_columns_reference() -> str:
    """The columns of the comparison table, in order, each with its meaning."""
    return "\n".join(table(("column", "meaning"), [(f"`{name}`", meaning) for name, meaning in comparison_column_meanings().items()]))


GENERATORS = {"cli": cli_reference, "experiment-keys": experiment_reference, "stream-keys": stream_reference,
              "strategies": strategy_reference, "mlflow": mlflow_reference, "exit-codes": exit_code_reference,
              "comparison-columns": comparison_columns_reference}


def fill(markdown: str) -> str:
    """``markdown`` with every ``<!-- generated: NAME -->`` marker replaced by its generated text."""

    def generate(match: re.Match) -> str:
        if match[1] not in GENERATORS:
            raise ValueError(f"unknown generated section {match[1]!r}; known: {', '.join(GENERATORS)}")
        return GENERATORS[match[1]]()

    return MARKER.sub(generate, markdown)


def on_page_markdown(markdown: str, **kwargs) -> str:
    """The mkdocs hook: a page's generated sections, written at build time."""
    return fill(markdown)
