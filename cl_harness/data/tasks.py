"""Cut the tasks of a stream: read each task's source, map labels, subset classes, carve and sample splits."""

from __future__ import annotations

import json
import random
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from cl_harness.config.guard import MAX_YAML_BYTES, GuardError, parse_json
from cl_harness.config.loader import LoadedStream
from cl_harness.config.names import NAME_HINT, name_problem
from cl_harness.config.schema import did_you_mean
from cl_harness.config.stream import TaskConfig
from cl_harness.data.sources import RawSplit, integer_too_long, json_array_item_lines, json_type_name, read_source
from cl_harness.errors import ConfigError, clip, short_repr

_EMPTY_HINT = "check classes, drop_unknown_labels, *_per_class and the source's splits"
LOOKALIKE_HINT = "normalise the labels (Unicode NFC, no surrounding whitespace) so that each is written one way"
OVERLAP_WARN_SHARE = 0.1  # more of a task's test texts than this among its train texts: a warning on stderr
_LABEL_TYPE_HINTS = {
    "true/false values": 'write the labels as strings ("yes", "no") or integers (1, 0) in the data',
    "numbers": 'write the labels as integers (1, not 1.0) or as strings ("1.5") in the data',
}


@dataclass
class TaskData:
    """One task's examples: texts and label ids into ``label_names``."""

    name: str
    label_names: list[str]
    train_texts: list
    train_labels: list[int]
    test_texts: list
    test_labels: list[int]
    kind: str = "classification"  # classification | mlm (then label_names is empty and every label 0)
    valid_texts: list = field(default_factory=list)  # carved from the training data (valid_per_class / valid_fraction)
    valid_labels: list[int] = field(default_factory=list)


@dataclass
class _Examples:
    """Texts and label ids of one split while it is being cut."""

    texts: list
    labels: list[int]

    def take(self, indices: Sequence[int]) -> "_Examples":
        """The examples at ``indices``, in that order."""
        return _Examples([self.texts[i] for i in indices], [self.labels[i] for i in indices])


@dataclass
class _TaskCutter:
    """Cuts task ``index`` of ``stream``; every error points at the task's keys in the stream file."""

    stream: LoadedStream
    index: int

    @property
    def task(self) -> TaskConfig:
        """The task's config."""
        return self.stream.config.tasks[self.index]

    def fail(self, keys: tuple, message: str, hint: str | None = None) -> ConfigError:
        """A ConfigError at ``tasks[index].<keys>``."""
        return self.stream.source.error(("tasks", self.index) + tuple(keys), message, hint=hint)

    def read(self) -> dict[str, RawSplit | None]:
        """The task's raw splits, at least one of them non-empty."""
        raw = read_source(self.task.source, self.stream.base_dir, self.stream.source, ("tasks", self.index, "source"))
        if raw["train"] is None and raw["test"] is None:
            raise self.fail(("source",), "the source has neither a train nor a test split")
        for name, split in raw.items():
            if split is not None and split.num_rows == 0:
                raise self.fail(("source",), f"the {name} split ({split.origin}) has no rows")
        return raw

    def cut_texts(self) -> TaskData:
        """An mlm task: the text field of each split, a missing split carved, both sampled (seeded)."""
        task = self.task
        splits = {}
        for name, split in self.read().items():
            if split is not None:
                texts = self.texts(split, name)
                splits[name] = [texts[i] for i in self.non_empty(texts, split, name)]
        if "train" in splits and "test" in splits:
            train, test = splits["train"], splits["test"]
        else:
            (texts,) = splits.values()
            order = list(range(len(texts)))
            random.Random(f"{task.split_seed}:carve:mlm").shuffle(order)
            n_test = _carved_count(len(texts), task.test_fraction)
            test, train = [texts[i] for i in sorted(order[:n_test])], [texts[i] for i in sorted(order[n_test:])]
        train = _sample_texts(train, task.train_examples, f"{task.split_seed}:train")
        test = _sample_texts(test, task.test_examples, f"{task.split_seed}:test")
        for split_name, texts in (("train", train), ("test", test)):
            if not texts:
                raise self.fail((), f"the {split_name} split of the mlm task is empty", hint="give more text or a test_file")
        return TaskData(task.name, [], train, [0] * len(train), test, [0] * len(test), kind="mlm")

    def cut(self) -> TaskData:
        """Read, label, subset, carve and sample the task."""
        task = self.task
        if task.type == "mlm":
            return self.cut_texts()
        raw = self.read()
        self.check_label_values(raw)
        declared, inferred = self.label_names(raw)
        if inferred:  # declared names make an int an index and a string a name; inferred ones need one type
            self.check_label_types(raw)
        self.check_lookalikes(raw, declared, inferred)
        by_value = inferred or self.labels_are_names(raw, declared)
        splits = {
            name: self.examples(split, declared, by_value, name) for name, split in raw.items() if split is not None
        }
        names, splits = self.subset_classes(declared, splits)
        train, test = self.carve(splits, names)
        train, valid = carve_validation(self, train, names)
        train = self.sample(train, names, task.train_per_class, "train")
        test = self.sample(test, names, task.test_per_class, "test")
        self.check_result(names, train, test)
        self.warn_overlap(train, test)
        names = self.renamed(names)  # after sampling: the same examples as without renaming
        return TaskData(task.name, names, train.texts, train.labels, test.texts, test.labels,
                        valid_texts=valid.texts, valid_labels=valid.labels)

    # -- label names -------------------------------------------------------------------------------

    def check_label_types(self, raw: dict[str, RawSplit | None]) -> None:
        """Labels read from the data alone (no label_names) are all strings or all integers: a ``true`` or ``1.5``
        among names would silently become a class of its own."""
        field = self.task.label_field
        found: dict[str, list[tuple[str, RawSplit, int]]] = {}  # kind -> (split name, split, row) of each label
        for split_name, split in raw.items():
            if split is None or field not in split.columns or field in split.strings:
                continue  # a missing field is reported where read; CSV digits (ints only as read) match either type
            for row, value in enumerate(split.columns[field]):
                if value is not None:
                    found.setdefault(_label_kind(value), []).append((split_name, split, row))
        if not found or (len(found) == 1 and next(iter(found)) in ("strings", "integers")):
            return
        if len(found) == 1:
            raise self.one_label_type_error(field, *found.items())
        usual = max(found, key=lambda kind: (kind in ("strings", "integers"), len(found[kind])))
        odd = next(kind for kind in found if kind != usual) if len(found) > 1 else usual
        split_name, split, row = found[odd][0]
        kinds = ", ".join(f"{kind} ({len(rows)} row{'s' if len(rows) != 1 else ''})" for kind, rows in found.items())
        raise self.fail(
            ("label_field",),
            f"labels of {len(found)} types in {field!r}: {kinds}; first of the {odd}: {split.row(row)} of the "
            f"{split_name} split ({split.origin}): {short_repr(split.columns[field][row])}",
            hint="all labels of a task must be of one type: all strings or all integers",
        )

    def one_label_type_error(self, field: str, found: tuple[str, list[tuple[str, RawSplit, int]]]) -> ConfigError:
        """The error for labels all of one kind that is neither strings nor integers (true/false values, numbers)."""
        kind, rows = found
        split_name, split, row = rows[0]
        return self.fail(
            ("label_field",),
            f"the labels in {field!r} are {kind} ({len(rows)} row{'s' if len(rows) != 1 else ''}), not strings or integers; "
            f"first: {split.row(row)} of the {split_name} split ({split.origin}): {short_repr(split.columns[field][row])}",
            hint=_LABEL_TYPE_HINTS.get(kind, "a label must be a string or an integer"),
        )

    def check_lookalikes(self, raw: dict[str, RawSplit | None], names: list[str], inferred: bool) -> None:
        """No two labels of the task read alike but are written differently (``café`` composed and decomposed, ``pos``
        and ``pos ``): they would be two classes that every message prints the same."""
        pair = lookalike_pair(names)
        if pair is None:
            return
        first, second = pair
        if inferred:
            raise self.fail(
                ("label_field",),
                f"the labels {clip(ascii(first), 60)} in {self.where_label(raw, first)} and {clip(ascii(second), 60)} in "
                f"{self.where_label(raw, second)} read alike but are written differently; they would be two classes",
                hint=LOOKALIKE_HINT,
            )
        declared = self.task.label_names
        keys = ("label_field",) if declared is None else ("label_names", names.index(second)) if isinstance(declared, list) else ("label_names",)
        raise self.fail(keys, f"the label names {shown_apart(first, second)} read alike but are written differently",
                        hint=LOOKALIKE_HINT)

    def where_label(self, raw: dict[str, RawSplit | None], name: str) -> str:
        """Where the label ``name`` first occurs: ``row 3 (line 4) of the train split (path)``."""
        field = self.task.label_field
        for split_name, split in raw.items():
            if split is not None and field in split.columns:
                row = next((i for i, v in enumerate(split.columns[field]) if v is not None and str(v) == name), None)
                if row is not None:
                    return f"{split.row(row)} of the {split_name} split ({split.origin})"
        return "the data"

    def check_label_values(self, raw: dict[str, RawSplit | None]) -> None:
        """A label read from the data becomes a name that is printed and logged: no control characters, no lone
        surrogates (``config.names.name_problem``); the first such label is refused at its row."""
        field = self.task.label_field
        for split_name, split in raw.items():
            if split is None or field not in split.columns:
                continue  # a missing field is reported where the labels are read
            values = split.columns[field]
            bad = {value for value in {v for v in values if isinstance(v, str)} if name_problem(value)}
            if bad:
                row = next(i for i, v in enumerate(values) if isinstance(v, str) and v in bad)
                raise self.fail(
                    ("label_field",),
                    f"{split.row(row)} of the {split_name} split ({split.origin}): the label {short_repr(values[row], 60)} "
                    f"in {field!r} {name_problem(values[row])}",
                    hint=NAME_HINT,
                )

    def check_names(self, names: list[str], keys: tuple, where: str = "", lines: list[int] | None = None) -> None:
        """Every label name must pass ``name_problem``: the first that does not is refused at ``keys + (index,)`` (a list
        in the stream file) or at ``keys`` naming ``where`` (a file, with ``lines`` of its items) and the item."""
        for index, name in enumerate(names):
            problem = name_problem(str(name))
            if problem is None:
                continue
            if not where:
                raise self.fail(keys + (index,), f"the label name {short_repr(name, 60)} {problem}", hint=NAME_HINT)
            line = f"line {lines[index]}: " if lines is not None and index < len(lines) else ""
            raise self.fail(keys, f"{where}: {line}item {index}: the label name {short_repr(name, 60)} {problem}", hint=NAME_HINT)

    def label_names(self, raw: dict[str, RawSplit | None]) -> tuple[list[str], bool]:
        """The label names (list, JSON file, ClassLabel or inferred from the data) and whether they were inferred."""
        declared, field = self.task.label_names, self.task.label_field
        if isinstance(declared, list):
            names = declared
            self.check_names(names, ("label_names",))
        elif isinstance(declared, str):
            names = self.label_names_file(declared)
        else:
            split = next((s for s in raw.values() if s and field in s.class_labels), None)
            names = split.class_labels[field] if split is not None else None
            if split is not None:
                self.check_names(names, ("label_field",), f"the ClassLabel names of {field!r} in {split.origin}")
        if names is None:
            values = [
                v for name, s in raw.items() if s is not None for v in self.column(s, field, ("label_field",), name)
            ]
            return inferred_names(values), True
        if len(set(names)) != len(names):
            raise self.fail(("label_names",), f"lists a label twice: {names}")
        return list(names), False

    def label_names_file(self, name: str) -> list[str]:
        """The label names held by a JSON file (relative to the stream's directory)."""
        path = Path(name).expanduser()
        path = path if path.is_absolute() else self.stream.base_dir / path
        if not path.is_file():
            if not path.exists() and path.suffix.lower() != ".json" and "/" not in name and "\\" not in name:
                raise self.fail(("label_names",), f"expected a list of names or a path to a JSON file; got {clip(name, 80)}",
                                hint="label_names: [neg, pos], or label_names: labels.json")
            raise self.fail(("label_names",), f"label names file not found: {path}", hint="give a list, or a JSON file")
        text = ""
        try:
            if path.stat().st_size > MAX_YAML_BYTES:
                raise GuardError(f"the file has {path.stat().st_size} bytes; a label names file may hold at most {MAX_YAML_BYTES}")
            text = path.read_text(encoding="utf-8-sig")
            data = parse_json(text, max_chars=MAX_YAML_BYTES)
        except (OSError, UnicodeDecodeError) as exc:
            raise self.fail(("label_names",), f"cannot read label names file {path}: {exc}") from None
        except json.JSONDecodeError as exc:
            raise self.fail(("label_names",), f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        except GuardError as exc:
            raise self.fail(("label_names",), f"{path}: " + (f"line {exc.line}: " if exc.line else "") + str(exc)) from None
        except ValueError as exc:  # an integer longer than Python converts: json names no line
            problem = integer_too_long(exc, text)
            if problem is None:
                raise
            raise self.fail(("label_names",), f"{path}: {problem}", hint=problem.hint) from None
        if not isinstance(data, list) or not data or not all(isinstance(v, (str, int)) for v in data):
            raise self.fail(("label_names",), f"{path} must hold a JSON array of label names (strings)")
        names = [str(v) for v in data]
        if any(name_problem(name) for name in names):
            self.check_names(names, ("label_names",), str(path), json_array_item_lines(text))
        return names

    # -- one split ---------------------------------------------------------------------------------

    def labels_are_names(self, raw: dict[str, RawSplit | None], names: list[str]) -> bool:
        """Whether integer labels are the declared names themselves (ratings 1..5 named "1".."5"), not indices into them."""
        if self.task.label_names is None:  # a ClassLabel's integers are always indices
            return False
        values = [
            v for name, s in raw.items() if s is not None for v in self.column(s, self.task.label_field, ("label_field",), name)
        ]
        ints = {v for v in values if isinstance(v, int) and not isinstance(v, bool)}
        return bool(ints) and all(str(v) in names for v in ints)

    def examples(self, split: RawSplit, names: list[str], by_value: bool, split_name: str) -> _Examples:
        """Texts and label ids of one split (rows with an unknown label: an error, or dropped; empty labels: an error)."""
        texts = self.texts(split, split_name)
        raw_labels = self.column(split, self.task.label_field, ("label_field",), split_name)
        empty = [i for i, value in enumerate(raw_labels) if value is None or (isinstance(value, str) and not value.strip())]
        if empty:
            raise self.fail(
                ("label_field",),
                f"{len(empty)} of {len(raw_labels)} rows of the {split_name} split ({split.origin}) have an empty "
                f"{self.task.label_field!r} (first: row {empty[0]})",
                hint="fill in or remove those rows",
            )
        lookup = {name: i for i, name in enumerate(names)}
        ids = [label_id(value, names, lookup, by_name_only=by_value) for value in raw_labels]
        unknown = [i for i, label in enumerate(ids) if label is None]
        if unknown and not self.task.drop_unknown_labels:
            raise self.unknown_labels_error(split, split_name, [raw_labels[i] for i in unknown], names)
        keep = set(self.non_empty(texts, split, split_name))
        keep = [i for i, label in enumerate(ids) if label is not None and i in keep]
        return _Examples([texts[i] for i in keep], [ids[i] for i in keep])

    def non_empty(self, texts: list, split: RawSplit, split_name: str) -> list[int]:
        """Indices of rows whose text (each text of a pair) is not blank; blank ones are refused unless ``drop_empty_texts``."""
        keep = [i for i, text in enumerate(texts) if all((t or "").strip() for t in (text if isinstance(text, tuple) else (text,)))]
        if len(keep) < len(texts) and not self.task.drop_empty_texts:
            kept = set(keep)
            first = next(i for i in range(len(texts)) if i not in kept)
            raise self.fail(
                ("text_field",),
                f"{len(texts) - len(keep)} of {len(texts)} rows of the {split_name} split ({split.origin}) have an empty "
                f"or blank text (first: row {first})",
                hint="set drop_empty_texts: true on the task to drop them, or fix the data",
            )
        return keep

    def texts(self, split: RawSplit, split_name: str) -> list:
        """The split's texts: strings, or (str, str) tuples for two text fields."""
        fields = self.task.text_fields
        columns = [
            self.text_column(split, name, ("text_field",) if len(fields) == 1 else ("text_field", i), split_name)
            for i, name in enumerate(fields)
        ]
        return columns[0] if len(columns) == 1 else list(zip(*columns))

    def text_column(self, split: RawSplit, name: str, keys: tuple, split_name: str) -> list[str]:
        """One text column as strings; a missing value is an error naming the row."""
        values = self.column(split, name, keys, split_name)
        if name in split.strings:  # a CSV column of integer-looking texts: the texts as written
            values = list(split.strings[name])
        structured = [row for row, value in enumerate(values) if isinstance(value, (dict, list, tuple))]
        if structured:
            kind = "a JSON object" if isinstance(values[structured[0]], dict) else "a list"
            raise self.fail(
                keys,
                f"{len(structured)} rows of the {split_name} split ({split.origin}) hold {kind} instead of text in "
                f"{name!r} (first: row {structured[0]})",
                hint="text_field must name a column of plain strings",
            )
        not_text = [row for row, value in enumerate(values) if value is not None and not isinstance(value, str)]
        if not_text:
            first = values[not_text[0]]
            raise self.fail(
                keys,
                f"{len(not_text)} rows of the {split_name} split ({split.origin}) hold {json_type_name(first)} instead "
                f"of text in {name!r} (first: {split.row(not_text[0])}: {short_repr(first)})",
                hint="decode the column to strings (UTF-8) when writing the file" if isinstance(first, (bytes, bytearray))
                else 'a text must be a string: write "42", not 42',
            )
        broken = next((row for row, value in enumerate(values) if value is not None and _has_lone_surrogate(value)), None)
        if broken is not None:
            raise self.fail(
                keys,
                f"{split.row(broken)} of the {split_name} split ({split.origin}) holds a lone surrogate "
                f"({_first_lone_surrogate(values[broken])}) in {name!r}, which is not text",
                hint="an escape such as \\ud800 must be one of a valid pair (\\ud83d\\ude00); fix or remove that row",
            )
        for row, value in enumerate(values):
            if value is None and not self.task.drop_empty_texts:
                raise self.fail(keys, f"{split.row(row)} of the {split_name} split ({split.origin}) has no value for {name!r}",
                                hint="set drop_empty_texts: true on the task to drop such rows")
        return ["" if v is None else v for v in values]

    def column(self, split: RawSplit, name: str, keys: tuple, split_name: str) -> list:
        """A column of the split; a missing field is an error listing the fields that exist."""
        if name not in split.columns:
            fields = split.field_names
            hint = did_you_mean(name, fields) or "set text_field / label_field to one of the existing fields"
            raise self.fail(
                keys,
                f"field {name!r} not found in the {split_name} split ({split.origin}); "
                f"its fields are: {', '.join(fields) or '(none)'}",
                hint=hint,
            )
        return list(split.columns[name])

    def unknown_labels_error(self, split: RawSplit, split_name: str, unknown: list, names: list[str]) -> ConfigError:
        """The error for rows whose label is not declared."""
        keys = ("label_names",) if self.task.label_names is not None else ("label_field",)
        where = f"{len(unknown)} rows of the {split_name} split ({split.origin}) have a label outside the declared labels"
        alike = next(((v, other) for v in dict.fromkeys(unknown[:1000]) if isinstance(v, str)
                      for other in [lookalike(v, names)] if other is not None), None)
        if alike is not None:
            return self.fail(keys, f"{where}: {clip(ascii(alike[0]), 60)} reads like the label {clip(ascii(alike[1]), 60)} "
                             "but is written differently", hint=LOOKALIKE_HINT)
        examples = ", ".join(dict.fromkeys(repr(v) for v in unknown[:1000]))
        return self.fail(
            keys,
            f"{where}, e.g. {examples[:120]}; allowed: {', '.join(names) or '(no label is declared)'}",
            hint="set drop_unknown_labels: true to drop those rows",
        )

    # -- class subset, carving, sampling -----------------------------------------------------------

    def subset_classes(self, names: list[str], splits: dict[str, _Examples]) -> tuple[list[str], dict]:
        """Keep only ``classes`` (ids renumbered in that order); without it, all labels."""
        classes = self.task.classes
        if classes is None:
            return names, splits
        for j, name in enumerate(classes):
            if name not in names:
                raise self.fail(("classes", j), *not_a_label(name, names))
        new_id = {names.index(name): i for i, name in enumerate(classes)}
        out = {}
        for split_name, ex in splits.items():
            keep = [i for i, label in enumerate(ex.labels) if label in new_id]
            out[split_name] = _Examples([ex.texts[i] for i in keep], [new_id[ex.labels[i]] for i in keep])
        return list(classes), out

    def renamed(self, names: list[str]) -> list[str]:
        """The label names after ``rename_labels``; each key must be a kept label and the new names stay distinct."""
        renames = self.task.rename_labels or {}
        for old in renames:
            if old not in names:
                raise self.fail(("rename_labels", old), *not_a_label(old, names))
        for old, new in renames.items():
            problem = name_problem(new)
            if problem is not None:
                raise self.fail(("rename_labels", old), f"the new label name {short_repr(new, 60)} {problem}", hint=NAME_HINT)
        new_names = [renames.get(name, name) for name in names]
        for i, new in enumerate(new_names):
            if new in new_names[:i]:
                first = names[new_names.index(new)]
                raise self.fail(
                    ("rename_labels",),
                    f"{first!r} and {names[i]!r} would both be called {new!r}; a task's labels must stay distinct",
                )
        pair = lookalike_pair(new_names)
        if pair is not None:
            old = names[new_names.index(pair[1])]
            raise self.fail(("rename_labels", old if old in renames else names[new_names.index(pair[0])]),
                            f"the new label names {shown_apart(*pair)} read alike but are written differently",
                            hint=LOOKALIKE_HINT)
        return new_names

    def carve(self, splits: dict[str, _Examples], names: list[str]) -> tuple[_Examples, _Examples]:
        """Both splits; a missing one is carved, stratified and seeded, from the other."""
        if "train" in splits and "test" in splits:
            return splits["train"], splits["test"]
        (have,) = splits.values()
        fraction = self.task.test_fraction
        train_idx: list[int] = []
        test_idx: list[int] = []
        for label, indices in self.by_class(have.labels, len(names)).items():
            rng = random.Random(f"{self.task.split_seed}:carve:{names[label]}")
            shuffled = indices[:]
            rng.shuffle(shuffled)
            n_test = _carved_count(len(indices), fraction)
            test_idx += shuffled[:n_test]
            train_idx += shuffled[n_test:]
        return have.take(sorted(train_idx)), have.take(sorted(test_idx))

    @staticmethod
    def by_class(labels: list[int], num_classes: int) -> dict[int, list[int]]:
        """Row indices per label id, for the ids that occur."""
        groups: dict[int, list[int]] = {label: [] for label in range(num_classes)}
        for i, label in enumerate(labels):
            groups[label].append(i)
        return {label: idx for label, idx in groups.items() if idx}

    def sample(self, ex: _Examples, names: list[str], per_class: int | None, split_name: str) -> _Examples:
        """At most ``per_class`` examples of each class, chosen with the task's split seed; order kept."""
        if per_class is None:
            return ex
        return ex.take(sample_per_class(ex.labels, names, per_class, f"{self.task.split_seed}:{split_name}"))

    def check_result(self, names: list[str], train: _Examples, test: _Examples) -> None:
        """The cut task must have train and test examples, and two classes in a class-incremental stream."""
        for split_name, ex in (("train", train), ("test", test)):
            if not ex.labels:
                raise self.fail((), f"the {split_name} split is empty after filtering", hint=_EMPTY_HINT)
        test_only = sorted(set(test.labels) - set(train.labels))
        if test_only and not self.task.allow_test_only_labels:
            shown = ", ".join(repr(names[i]) for i in test_only[:5]) + (" ..." if len(test_only) > 5 else "")
            raise self.fail(
                ("label_field",) if self.task.classes is None else ("classes",),
                f"{len(test_only)} label(s) occur in the test split but in no train example: {shown}",
                hint="fix the splits, keep only trained classes with `classes`, or set allow_test_only_labels: true",
            )
        present = len(set(train.labels))
        scenario = self.stream.config.scenario
        if scenario in ("class_incremental", "task_incremental") and present < 2:  # task_incremental: a one-unit head
            raise self.fail(
                ("classes",) if self.task.classes is not None else (),
                f"a {scenario} task needs at least 2 classes; its train split has {present} "
                f"({', '.join(sorted({names[i] for i in train.labels}))})",
                hint="give the task two or more classes",
            )

    def warn_overlap(self, train: _Examples, test: _Examples) -> None:
        """One line on stderr when more than ``OVERLAP_WARN_SHARE`` of the test texts are also train texts of the task."""
        seen = set(train.texts)
        shared = sum(text in seen for text in test.texts)
        if test.texts and shared > OVERLAP_WARN_SHARE * len(test.texts):
            share = f"{shared} of {len(test.texts)} test texts ({shared / len(test.texts):.0%})"
            warning = self.fail((), f"{share} are also train texts of the task; its accuracy partly measures memorisation")
            print(f"warning: {warning}", file=sys.stderr, flush=True)


def label_key(name: str) -> str:
    """How a label reads: NFC-normalised, surrounding whitespace stripped."""
    return unicodedata.normalize("NFC", name).strip()


def lookalike(name: str, names: Iterable[str]) -> str | None:
    """The first of ``names`` that reads like ``name`` (``label_key``) but is written differently, or None."""
    key = label_key(name)
    return next((other for other in names if other != name and label_key(other) == key), None)


def lookalike_pair(names: Iterable[str]) -> tuple[str, str] | None:
    """The first two of ``names`` that read alike but are written differently, or None."""
    seen: dict[str, str] = {}
    for name in names:
        first = seen.setdefault(label_key(name), name)
        if first != name:
            return first, name
    return None


def shown_apart(first: str, second: str) -> str:
    """Two labels that read alike, escaped so that their difference shows: ``'caf\\xe9' and 'cafe\\u0301'``."""
    return f"{clip(ascii(first), 60)} and {clip(ascii(second), 60)}"


def not_a_label(name: str, names: list[str]) -> tuple[str, str | None]:
    """The message and hint for ``name`` (from the stream file) that is not one of the task's labels ``names``."""
    other = lookalike(name, names)
    if other is not None:
        return (f"{clip(ascii(name), 60)} is not a label of this task; the label {clip(ascii(other), 60)} reads the same "
                "but is written differently", LOOKALIKE_HINT)
    return f"{name!r} is not a label of this task; labels: {', '.join(names)}", did_you_mean(name, names)


def sample_per_class(labels: list[int], names: list[str], per_class: int, seed: str) -> list[int]:
    """Sorted row indices keeping at most ``per_class`` rows of each label, drawn per class from ``seed``."""
    keep: list[int] = []
    for label, indices in _TaskCutter.by_class(labels, len(names)).items():
        if len(indices) > per_class:
            indices = random.Random(f"{seed}:{names[label]}").sample(indices, per_class)
        keep += indices
    return sorted(keep)


def _sample_texts(texts: list, limit: int | None, seed: str) -> list:
    """At most ``limit`` of ``texts``, drawn with ``seed``, in their original order."""
    if limit is None or len(texts) <= limit:
        return texts
    return [texts[i] for i in sorted(random.Random(seed).sample(range(len(texts)), limit))]


def carve_validation(cutter: _TaskCutter, train: _Examples, names: list[str]) -> tuple[_Examples, _Examples]:
    """``(train, valid)``: the validation split carved per class from the training data only, seeded, disjoint.

    ``valid_per_class`` takes N examples of each class (each class must keep at least one for
    training, else a ConfigError at that key); ``valid_fraction`` that share of each class. The
    draw depends only on ``split_seed`` and the class name, never on the test split.
    """
    task = cutter.task
    if task.valid_per_class is None and task.valid_fraction is None:
        return train, _Examples([], [])
    train_idx: list[int] = []
    valid_idx: list[int] = []
    for label, indices in _TaskCutter.by_class(train.labels, len(names)).items():
        if task.valid_per_class is not None:
            if len(indices) <= task.valid_per_class:
                raise cutter.fail(
                    ("valid_per_class",),
                    f"class {names[label]!r} has {len(indices)} training examples; valid_per_class {task.valid_per_class} "
                    "would leave none to train on",
                    hint=f"at most {len(indices) - 1} for this task, or use valid_fraction",
                )
            n_valid = task.valid_per_class
        else:
            n_valid = _carved_count(len(indices), task.valid_fraction)
        shuffled = indices[:]
        random.Random(f"{task.split_seed}:valid:{names[label]}").shuffle(shuffled)
        valid_idx += shuffled[:n_valid]
        train_idx += shuffled[n_valid:]
    return train.take(sorted(train_idx)), train.take(sorted(valid_idx))


def _carved_count(size: int, fraction: float) -> int:
    """How many of ``size`` examples of a class go to the carved test split (one at least, all but one at most)."""
    if size < 2:
        return 0
    return min(max(round(size * fraction), 1), size - 1)


def inferred_names(raw_labels: list) -> list[str]:
    """Label names from the data alone: the sorted unique values, as strings."""
    try:
        values = {v for v in raw_labels if v is not None}
    except TypeError:  # unhashable values such as lists
        values = {str(v) for v in raw_labels if v is not None}
    try:
        ordered = sorted(values)
    except TypeError:
        ordered = sorted(values, key=str)
    return list(dict.fromkeys(str(v) for v in ordered))


def _has_lone_surrogate(text: str) -> bool:
    """Whether ``text`` holds a lone surrogate (a ``\\ud800`` escape without its pair), which no tokenizer takes; fast on
    long texts."""
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _first_lone_surrogate(text: str) -> str:
    """``U+D800``: the first lone surrogate of a text known to hold one."""
    return next(f"U+{ord(c):04X}" for c in text if 0xD800 <= ord(c) <= 0xDFFF)


def _label_kind(value: Any) -> str:
    """How a label's type is named in messages (plural): strings, integers, true/false values, numbers, ..."""
    if isinstance(value, bool):
        return "true/false values"
    if isinstance(value, int):
        return "integers"
    if isinstance(value, str):
        return "strings"
    if isinstance(value, float):
        return "numbers"
    return {dict: "objects", list: "lists"}.get(type(value), type(value).__name__ + " values")


def label_id(value: Any, names: list[str], lookup: dict[str, int], by_name_only: bool = False) -> int | None:
    """The id of a raw label: a name, or an int index into the names; None when unknown."""
    if isinstance(value, int) and not isinstance(value, bool) and not by_name_only:
        return value if 0 <= value < len(names) else None
    if value is None:
        return None
    return lookup.get(value if isinstance(value, str) else str(value))


def load_task(stream: LoadedStream, index: int) -> TaskData:
    """Read and cut task ``index`` of the stream."""
    return _TaskCutter(stream, index).cut()


def check_shared_labels(stream: LoadedStream, tasks: list[TaskData | None]) -> None:
    """Refuse a task of a domain-incremental stream that shares no label with the stream's first classification task.

    ``tasks``: the stream's tasks in order (None: not read). Partial overlap is allowed (the one head holds the union
    of the names); no overlap at all is class-incremental in effect. Under one shared head (class- and
    domain-incremental) no two tasks' labels may read alike but be written differently, and a domain-incremental stream
    must train two classes at least.
    """
    labelled = [(index, task) for index, task in enumerate(tasks) if task is not None and task.kind == "classification"]
    if stream.config.scenario != "task_incremental":
        check_lookalikes_across(stream, labelled)
    if stream.config.scenario != "domain_incremental" or not labelled:
        return
    first_index, first = labelled[0]
    trained = {task.label_names[label] for _, task in labelled for label in set(task.train_labels)}
    if len(trained) < 2 and all(task is not None for task in tasks):
        raise stream.source.error(
            ("tasks", first_index),
            f"the tasks of a domain_incremental stream train {len(trained)} class in all ({', '.join(sorted(trained))}); "
            "a model that always answers it is right before any training",
            hint="give the tasks two or more classes",
        )
    for index, task in labelled[1:]:
        if not set(first.label_names) & set(task.label_names):
            raise stream.source.error(
                ("tasks", index),
                f"the tasks of a domain_incremental stream must share their label set; task {task.name!r} "
                f"({', '.join(task.label_names)}) shares no label with task {first.name!r} ({', '.join(first.label_names)})",
                hint="map the labels onto common names with rename_labels (e.g. {music: first, weather: second}), "
                "or use scenario: class_incremental",
            )


def check_lookalikes_across(stream: LoadedStream, labelled: list[tuple[int, TaskData]]) -> None:
    """Refuse labels of two tasks that read alike but are written differently: one shared head gives them two units."""
    seen: dict[str, tuple[str, str]] = {}  # label_key -> (task name, label)
    for index, task in labelled:
        for name in task.label_names:
            other_task, other = seen.setdefault(label_key(name), (task.name, name))
            if other != name:
                raise stream.source.error(
                    ("tasks", index),
                    f"the label {clip(ascii(name), 60)} of task {task.name!r} reads like the label {clip(ascii(other), 60)} "
                    f"of task {other_task!r} but is written differently; the shared head would give them two units",
                    hint=LOOKALIKE_HINT,
                )


def load_stream_tasks(stream: LoadedStream) -> list[TaskData]:
    """Read and cut every task of the stream, in order (a domain-incremental stream's tasks must share labels)."""
    tasks = [load_task(stream, index) for index in range(len(stream.config.tasks))]
    check_shared_labels(stream, tasks)
    return tasks
