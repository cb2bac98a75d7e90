"""Read the raw rows of one split of a task's source: a hub dataset, local files, a saved dataset or the demo."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from cl_harness.config.guard import GuardError, parse_json
from cl_harness.config.stream import SourceConfig
from cl_harness.config.yaml_io import KeyPath, Source
from cl_harness.data.demo import DEMO_LABELS, generate_demo_rows
from cl_harness.errors import ConfigError, HubUnreachableError, clip

Split = Literal["train", "test"]

FILE_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet", ".txt")

FILES_HINT = "to use local files instead: source: {type: files, train_file: train.jsonl, test_file: test.jsonl}"
OFFLINE_HINT = (
    "the local twins in streams/local/ read the same benchmarks from files (run them with --data-root DIR); "
    "or point this task at local files instead: source: {type: files, train_file: train.jsonl, test_file: test.jsonl}"
)
_UNREACHABLE = re.compile(r"couldn't reach|offline|connection|timed out|name resolution|max retries", re.IGNORECASE)


@dataclass
class RawSplit:
    """The rows of one split as columns, the ClassLabel names of its columns, and where they came from."""

    columns: Mapping[str, Sequence[Any]]
    num_rows: int
    origin: str
    class_labels: dict[str, list[str]] = field(default_factory=dict)
    lines: list[int] | None = None  # the file line where each row starts (JSON lines, CSV), for messages
    strings: dict[str, list[str]] = field(default_factory=dict)  # CSV columns turned into ints, as written
    # finds ``lines`` when a message first needs them (a .json array: one more pass over the text, only then)
    find_lines: Callable[[], list[int] | None] | None = field(default=None, repr=False, compare=False)

    @property
    def field_names(self) -> list[str]:
        """The column names, in file order."""
        return list(self.columns)

    def row(self, index: int) -> str:
        """How a message names row ``index``: ``row 3`` or, when the file's lines are known, ``row 3 (line 5)``."""
        if self.lines is None and self.find_lines is not None:
            self.lines, self.find_lines = self.find_lines(), None
        if self.lines is not None and 0 <= index < len(self.lines):
            return f"row {index} (line {self.lines[index]})"
        return f"row {index}"


class _DatasetColumns(Mapping):
    """Columns of a ``datasets.Dataset``, converted to lists only when asked for."""

    def __init__(self, dataset: Any) -> None:
        self._dataset = dataset

    def __getitem__(self, name: str) -> list:
        if name not in self._dataset.column_names:
            raise KeyError(name)
        return list(self._dataset[name])

    def __contains__(self, name: object) -> bool:
        return name in self._dataset.column_names

    def __iter__(self) -> Iterator[str]:
        return iter(self._dataset.column_names)

    def __len__(self) -> int:
        return len(self._dataset.column_names)


@dataclass
class SourceReader:
    """Reads the splits of one task's source; errors point at ``path`` (the source's key path) in the stream file."""

    config: SourceConfig
    base_dir: Path
    source: Source
    path: KeyPath
    _saved: Any = field(default=None, init=False, repr=False)

    def fail(self, key: str | None, message: str, hint: str | None = None) -> ConfigError:
        """A ConfigError at the source key ``key`` (or the source itself)."""
        return self.source.error(self.path + ((key,) if key else ()), message, hint=hint)

    def resolve(self, name: str) -> Path:
        """A path from the stream file, relative to the stream's directory."""
        path = Path(name).expanduser()
        return path if path.is_absolute() else self.base_dir / path

    def check_distinct_files(self) -> None:
        """A files source's test_file is not its train_file: the task would be tested on its training rows."""
        train, test = self.config.train_file, self.config.test_file
        if self.config.type != "files" or not train or not test:
            return
        if _same_file(self.resolve(train), self.resolve(test)):
            raise self.fail(
                "test_file", f"test_file is the same file as train_file ({self.resolve(test)}); the task would be tested "
                "on its training rows", hint="give a held-out test file, or leave test_file out to carve test_fraction of "
                "the training file",
            )

    def read(self, split: Split) -> RawSplit | None:
        """The rows of ``split``, or None when the source does not have it."""
        readers = {"hub": self._read_hub, "files": self._read_files, "saved": self._read_saved, "demo": self._read_demo}
        return readers[self.config.type](split)

    def _read_demo(self, split: Split) -> RawSplit:
        """Generated demo rows of every demo topic."""
        per_class = self.config.train_examples_per_class if split == "train" else self.config.test_examples_per_class
        rows = generate_demo_rows(list(DEMO_LABELS), per_class, self.config.seed, split)
        origin = f"demo source (seed {self.config.seed}), {split} split"
        return rows_to_split(rows, origin, {"label": list(DEMO_LABELS)})

    def _read_files(self, split: Split) -> RawSplit | None:
        """Rows of the split's file, or None when none is given."""
        key = f"{split}_file"
        name = getattr(self.config, key)
        if not name:
            return None
        path = self.resolve(name)
        try:
            return read_file(path)
        except _FileProblem as problem:
            raise self.fail(key, str(problem), hint=problem.hint) from None

    def _read_saved(self, split: Split) -> RawSplit | None:
        """Rows of a split of the saved dataset (a plain Dataset is the train split)."""
        split_name = getattr(self.config, f"{split}_split")
        if split_name is None:
            return None
        import datasets

        data = self._load_saved()
        where = f"saved dataset {self.resolve(self.config.path)}"
        if not isinstance(data, datasets.DatasetDict):  # a plain Dataset is the train split
            return dataset_to_split(data, where) if split == "train" else None
        if split_name not in data:
            raise self.fail(
                f"{split}_split",
                f"{where} has no split {split_name!r}; it has: {', '.join(data)}",
                hint=f"set {split}_split to one of those, or to null to carve it from the other split",
            )
        return dataset_to_split(data[split_name], f"{where}, split {split_name!r}")

    def _load_saved(self) -> Any:
        """The saved Dataset or DatasetDict, loaded once."""
        if self._saved is None:
            self._saved = self._load_from_disk()
        return self._saved

    def _load_from_disk(self) -> Any:
        """``datasets.load_from_disk`` of the source's path."""
        import datasets

        path = self.resolve(self.config.path)
        if not path.is_dir():
            raise self.fail("path", f"saved dataset directory not found: {path}")
        try:
            return datasets.load_from_disk(str(path))
        except Exception as exc:  # noqa: BLE001 - any failure means it is not a readable saved dataset
            raise self.fail(
                "path",
                f"{path} is not a dataset directory written by save_to_disk ({_short(exc)})",
                hint="save one with datasets.Dataset.save_to_disk(dir), or use source type files",
            ) from None

    def _read_hub(self, split: Split) -> RawSplit | None:
        """Rows of a hub dataset split, via datasets.load_dataset."""
        import datasets

        split_name = getattr(self.config, f"{split}_split")
        if split_name is None:
            return None
        name, config = self.config.name, self.config.config
        what = f"hub dataset {name!r}" + (f" (config {config!r})" if config else "") + f", split {split_name!r}"
        try:
            data = datasets.load_dataset(name, config, split=split_name, revision=self.config.revision)
        except Exception as exc:  # noqa: BLE001 - offline, unknown id, unknown split: all are config problems
            reason = _short(exc)
            if _UNREACHABLE.search(reason):
                error = self.fail("name", f"the Hugging Face hub is unreachable: could not load {what}: {reason}", OFFLINE_HINT)
                raise HubUnreachableError(error.message, file=error.file, line=error.line, key=error.key, hint=error.hint) from None
            hint = FILES_HINT
            if "split" in reason.lower() and "unknown" in reason.lower():
                hint = f"set {split}_split to an existing split, or to null to carve it from the other; " + FILES_HINT
            raise self.fail("name", f"could not load {what}: {reason}", hint=hint) from None
        return dataset_to_split(data, what)


class _FileProblem(Exception):
    """A data file that cannot be read; turned into a ConfigError at the file's key."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def _short(exc: BaseException, limit: int = 200) -> str:
    """The first line of an exception message, shortened."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return text if len(text) <= limit else text[: limit - 3] + "..."


def rows_to_split(
    rows: Sequence[Mapping[str, Any]], origin: str, class_labels: dict | None = None, lines: list[int] | None = None
) -> RawSplit:
    """Columns from a list of row objects; a row that lacks a key has None there."""
    names: dict[str, None] = {}
    for row in rows:
        for key in row:
            names.setdefault(key, None)
    columns = {name: [row.get(name) for row in rows] for name in names}
    return RawSplit(columns, len(rows), origin, dict(class_labels or {}), lines)


def dataset_to_split(data: Any, origin: str) -> RawSplit:
    """A ``datasets.Dataset`` as a RawSplit, with the names of its ClassLabel columns."""
    import datasets

    labels = {
        name: list(feature.names)
        for name, feature in data.features.items()
        if isinstance(feature, datasets.ClassLabel)
    }
    return RawSplit(_DatasetColumns(data), len(data), origin, labels)


def read_file(path: Path) -> RawSplit:
    """Rows of a json, jsonl, csv, parquet or txt file (one ``text`` per non-blank line), chosen by suffix."""
    suffix = path.suffix.lower()
    if suffix not in FILE_SUFFIXES:
        raise _FileProblem(
            f"unsupported file type {path.suffix or '(no suffix)'!r}: {path}",
            hint=f"use one of {', '.join(FILE_SUFFIXES)}",
        )
    if not path.exists():
        blocked = _first_missing_folder(path)
        if blocked is not None:
            folder, is_file = blocked
            what = "is a file, not a folder" if is_file else "does not exist"
            raise _FileProblem(f"file not found: {path} (its folder {folder} {what})")
        raise _FileProblem(f"file not found: {path}", hint="relative paths resolve against the stream file's directory")
    if not path.is_file():
        raise _FileProblem(f"not a file: {path}")
    if suffix == ".parquet":
        return _read_parquet(path)
    text = _read_text(path)
    if suffix == ".csv":
        return _read_csv(path, text)
    if suffix == ".txt":
        return rows_to_split([{"text": line.strip()} for line in text.splitlines() if line.strip()], str(path))
    try:
        return _read_json(path, suffix, text)
    except GuardError as exc:
        raise _FileProblem(f"{path}: " + (f"line {exc.line}: " if exc.line else "") + str(exc)) from None


def _same_file(first: Path, second: Path) -> bool:
    """Whether two paths name one file (a link or another spelling of the same path included)."""
    try:
        return os.path.samefile(first, second)
    except OSError:  # a missing file: compare the paths (reading it reports it)
        return first.resolve() == second.resolve()


def _first_missing_folder(path: Path) -> tuple[Path, bool] | None:
    """The first ancestor folder of ``path`` that does not exist or is a file: ``(folder, is_file)``; None if all exist."""
    for parent in reversed(path.parents):
        if not parent.exists():
            return parent, False
        if not parent.is_dir():
            return parent, True
    return None


def _read_json(path: Path, suffix: str, text: str) -> RawSplit:
    """Rows of a .json file (an array of objects, or JSON lines) or a .jsonl file."""
    if suffix == ".json":
        document = _whole_json(path, text)
        if document is _NOT_ONE_DOCUMENT and text.lstrip()[:1] == "[":
            document = _parse_json_array(path, text)
        if document is not _NOT_ONE_DOCUMENT:
            split = rows_to_split(_json_rows(path, document), str(path))
            if "\n" in text.strip():  # on one line, "line 1" tells nothing
                split.find_lines = lambda: json_array_item_lines(text)
            return split
    rows, lines = _parse_json_lines(path, text)
    return rows_to_split(rows, str(path), lines=lines)


_NOT_ONE_DOCUMENT = object()
_CONSTANT_HINT = "JSON has no NaN or Infinity: write null, a number or a string instead"
_STRING_OR_CONSTANT = re.compile(r'"(?:[^"\\]|\\.)*"|(-?Infinity|NaN)')


class _JsonConstant(Exception):
    """``NaN``, ``Infinity`` or ``-Infinity`` in a data file: Python's json reads them, JSON does not have them."""


def _refuse_constant(name: str) -> object:
    raise _JsonConstant(name)


def _loads(text: str) -> object:
    """The guarded JSON parse (duplicate keys, depth) that also refuses the NaN and Infinity constants (``_JsonConstant``)
    and integers longer than Python converts (``IntegerTooLong``)."""
    try:
        return parse_json(text, parse_constant=_refuse_constant)
    except json.JSONDecodeError:
        raise
    except ValueError as exc:
        problem = integer_too_long(exc, text)
        if problem is None:
            raise
        raise problem from None


class IntegerTooLong(Exception):
    """An integer in a JSON text with more digits than Python converts (``sys.get_int_max_str_digits``): ``json`` raises
    a bare ValueError that names neither line nor key. ``str()``: ``line 4: field 'label' is an integer of 5000 digits ...``."""

    hint = "write a number this long as a string, in quotes"

    def __init__(self, digits: int, line: int | None, where: str) -> None:
        self.detail = f"{where} is an integer of {digits} digits; at most {sys.get_int_max_str_digits()} are allowed"
        self.line = line
        super().__init__((f"line {line}: " if line else "") + self.detail)


class _LongInteger:
    """Where a too long integer was, in a parse that goes on past it (to find its key)."""

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _int_or_marker(text: str) -> int | _LongInteger:
    try:
        return int(text)
    except ValueError:
        return _LongInteger(len(text.lstrip("-")))


# a parse that never fails on a value: too long integers become markers, NaN and Infinity floats
_LENIENT = json.JSONDecoder(parse_int=_int_or_marker, parse_constant=float)
_WHITESPACE = re.compile(r"[ \t\n\r]*")


def integer_too_long(exc: ValueError, text: str) -> IntegerTooLong | None:
    """The problem with its line and key when ``exc`` (raised parsing ``text`` as JSON) is Python's limit on the digits
    of an integer; None for any other error."""
    if "integer string conversion" not in str(exc):
        return None
    limit = sys.get_int_max_str_digits()
    # a string, or an integer literal with more digits than the limit (not the digits of a fraction or an exponent)
    match = re.compile(r'"(?:[^"\\]|\\.)*"|(?<![0-9.eE+-])(-?[0-9]{%d,})(?![0-9.eE])' % (limit + 1))
    found = next((m for m in match.finditer(text) if m.group(1)), None)
    line = text.count("\n", 0, found.start()) + 1 if found else None
    digits = len(found.group(1).lstrip("-")) if found else 0
    for candidate in (text, text.splitlines()[line - 1] if line else None):
        if candidate is None:
            continue
        try:
            key = _marker_path(_LENIENT.decode(candidate))
        except (ValueError, RecursionError):
            continue
        if key is not None:
            item = key[0] if key and isinstance(key[0], int) and candidate is text else None
            return IntegerTooLong(digits, line, _describe_key(key[1:] if item is not None else key, item))
    return IntegerTooLong(digits, line, "a value")


def _marker_path(data: object) -> tuple | None:
    """The key path of the first too long integer in parsed data (document order), None if none."""
    stack: list[tuple[object, tuple]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if isinstance(value, _LongInteger):
            return path
        if isinstance(value, dict):
            stack.extend(reversed([(v, path + (k,)) for k, v in value.items()]))
        elif isinstance(value, list):
            stack.extend(reversed([(v, path + (i,)) for i, v in enumerate(value)]))
    return None


def _describe_key(key: tuple, item: int | None) -> str:
    """How a message names a value in a JSON text: ``item 5, field 'meta.n'``, ``field 'label'`` or ``item 1``."""
    parts = [f"item {item}"] if item is not None else []
    if key:
        name = "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in key).lstrip(".")
        parts.append(f"field {clip(repr(name), 80)}")
    return ", ".join(parts) or "the value"


def json_array_item_lines(text: str) -> list[int] | None:
    """The line where each item of the JSON array that is ``text`` starts; None when ``text`` is not one array."""
    i = _WHITESPACE.match(text).end()
    if text[i : i + 1] != "[":
        return None
    i = _WHITESPACE.match(text, i + 1).end()
    lines: list[int] = []
    line, counted = 1, 0
    if text[i : i + 1] == "]":
        return lines
    while True:
        line += text.count("\n", counted, i)
        counted = i
        lines.append(line)
        try:
            _, end = _LENIENT.raw_decode(text, i)
        except (ValueError, RecursionError):
            return None
        i = _WHITESPACE.match(text, end).end()
        if text[i : i + 1] == ",":
            i = _WHITESPACE.match(text, i + 1).end()
            continue
        return lines if text[i : i + 1] == "]" else None


def _constant_problem(path: Path, text: str, name: str, line: int | None = None) -> _FileProblem:
    """The problem for a NaN/Infinity constant; its line is found in ``text`` when not given."""
    if line is None:
        match = next((m for m in _STRING_OR_CONSTANT.finditer(text) if m.group(1)), None)
        line = text.count("\n", 0, match.start()) + 1 if match else None
    where = f" at line {line}" if line else ""
    return _FileProblem(f"{path}: {name}{where} is not valid JSON", hint=_CONSTANT_HINT)


def _whole_json(path: Path, text: str) -> object:
    """The file's text as one JSON document, or ``_NOT_ONE_DOCUMENT`` (e.g. JSON lines in a .json file)."""
    try:
        return _loads(text)
    except json.JSONDecodeError:
        return _NOT_ONE_DOCUMENT
    except _JsonConstant as constant:
        raise _constant_problem(path, text, str(constant)) from None
    except IntegerTooLong as problem:
        raise _FileProblem(f"{path}: {problem}", hint=problem.hint) from None


def json_type_name(value: object) -> str:
    """How a JSON value is called in messages: an object, an array, a string, a number, true/false, null."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (bytes, bytearray)):
        return "bytes"
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    return "null"


def _read_text(path: Path) -> str:
    """The file's text as UTF-8 (a byte-order mark is skipped)."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise _FileProblem(f"cannot read {path}: {_short(exc)}") from None


def _check_row(path: Path, row: Any, where: str) -> dict:
    """``row`` if it is a JSON object, else a problem naming ``where``."""
    if not isinstance(row, dict):
        raise _FileProblem(f"{path}: {where} is not an object but {type(row).__name__}: {_short(repr(row), 80)}")
    return row


def _parse_json_array(path: Path, text: str) -> object:
    """The document of a file holding one JSON array (of objects, checked by ``_json_rows``)."""
    try:
        return _loads(text)
    except json.JSONDecodeError as exc:
        raise _FileProblem(f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    except _JsonConstant as constant:
        raise _constant_problem(path, text, str(constant)) from None
    except IntegerTooLong as problem:
        raise _FileProblem(f"{path}: {problem}", hint=problem.hint) from None


def _json_rows(path: Path, data: object) -> list[dict]:
    """The rows of a parsed JSON document, which must be an array of objects."""
    if not isinstance(data, list):
        raise _FileProblem(f"{path}: expected a JSON array of objects, got {json_type_name(data)}",
                           hint="write [{...}, {...}], or one object per line in a .jsonl file")
    return [_check_row(path, row, f"item {index}") for index, row in enumerate(data)]


def _parse_json_lines(path: Path, text: str) -> tuple[list[dict], list[int]]:
    """Rows of a JSON-lines file, one object per non-blank line, and the line of each."""
    rows, lines = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = _loads(line)
        except json.JSONDecodeError as exc:
            raise _FileProblem(f"{path}: invalid JSON at line {number}, column {exc.colno}: {exc.msg}") from None
        except _JsonConstant as constant:
            raise _constant_problem(path, line, str(constant), number) from None
        except IntegerTooLong as problem:
            raise _FileProblem(f"{path}: line {number}: {problem.detail}", hint=problem.hint) from None
        except GuardError as exc:
            exc.line = number
            raise
        rows.append(_check_row(path, row, f"line {number}"))
        lines.append(number)
    return rows, lines


def _read_csv(path: Path, text: str) -> RawSplit:
    """Rows of a CSV file with a header; integer-looking columns become ints (their text kept in ``strings``)."""
    with _field_limit(len(text)):
        return _read_csv_rows(path, text)


@contextmanager
def _field_limit(chars: int) -> Iterator[None]:
    """Let the csv module read a field as long as the whole text (its default limit is 131072 characters)."""
    previous = csv.field_size_limit()
    csv.field_size_limit(max(previous, min(chars + 1, 2**31 - 1)))  # a C long on every platform
    try:
        yield
    finally:
        csv.field_size_limit(previous)


def _read_csv_rows(path: Path, text: str) -> RawSplit:
    """The rows of ``_read_csv``, read under its field limit."""
    reader = csv.reader(io.StringIO(text, newline=""))
    total_lines = len(text.splitlines())
    start = 1
    try:
        header = next(reader, None)
        if not header:
            raise _FileProblem(f"{path}: empty CSV file (a header line is needed)")
        _check_unique_columns(path, header, "line 1: the header")
        records, lines = [], []
        start = reader.line_num + 1
        for record in reader:
            spans = reader.line_num > start
            if spans and reader.line_num >= total_lines:  # a quoted field that runs to the end of the file
                opened = _unterminated_quote_line(text, start)
                if opened is not None:
                    raise _FileProblem(
                        f"{path}: line {opened} opens a quoted field that is never closed",
                        hint='close the quote, or write a quote inside a quoted field as ""',
                    )
            if record and len(record) != len(header):
                raise _FileProblem(
                    f"{path}: line {start} has {len(record)} fields, the header has {len(header)}"
                )
            if record:
                records.append(record)
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        opened = _unterminated_quote_line(text, start) if "end of data" in str(exc) else None
        if opened is not None:
            raise _FileProblem(f"{path}: line {opened} opens a quoted field that is never closed") from None
        raise _FileProblem(f"{path}: invalid CSV at line {reader.line_num}: {exc}") from None
    columns, strings = {}, {}
    for i, name in enumerate(header):
        values = [r[i] for r in records]
        columns[name] = _maybe_ints(values)
        if columns[name] is not values:
            strings[name] = values
    return RawSplit(columns, len(records), str(path), lines=lines, strings=strings)


def _check_unique_columns(path: Path, names: Sequence[str], where: str) -> None:
    """Refuse a column named twice: reading one of them would silently drop the other."""
    repeated = next((name for index, name in enumerate(names) if name in names[:index]), None)
    if repeated is not None:
        raise _FileProblem(f"{path}: {where} names the column {clip(repr(repeated), 60)} twice; give each column once")


def _unterminated_quote_line(text: str, first_line: int) -> int | None:
    """The line of a quote that opens a field and is never closed, in the records from ``first_line`` on; None if none."""
    rest = text.splitlines(keepends=True)[first_line - 1 :]
    line, in_quote, opened, field_start, i = first_line, False, 0, True, 0
    chunk = "".join(rest)
    while i < len(chunk):
        char = chunk[i]
        if in_quote:
            if char == '"':
                if chunk[i + 1 : i + 2] == '"':
                    i += 1
                else:
                    in_quote = False
        elif char == '"' and field_start:
            in_quote, opened = True, line
        field_start = not in_quote and char in ",\r\n"
        if char == "\n":
            line += 1
        i += 1
    return opened if in_quote else None


def _maybe_ints(values: list[str]) -> list:
    """The values as ints when every one is a plain integer literal (``3``, not ``03``), else unchanged."""
    try:
        numbers = [int(v) for v in values]
    except ValueError:
        return values
    return numbers if values and all(str(n) == v for n, v in zip(numbers, values)) else values


def _read_parquet(path: Path) -> RawSplit:
    """Rows of a parquet file."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for corrupt files
        raise _FileProblem(f"cannot read parquet file {path}: {_short(exc)}") from None
    _check_unique_columns(path, table.column_names, "the schema")
    return RawSplit(table.to_pydict(), table.num_rows, str(path))


def read_source(config: SourceConfig, base_dir: Path, source: Source, path: KeyPath) -> dict[str, RawSplit | None]:
    """The train and test splits of a source (None for a split it does not have)."""
    reader = SourceReader(config, base_dir, source, path)
    reader.check_distinct_files()
    return {"train": reader.read("train"), "test": reader.read("test")}
