"""Schema of a stream YAML: an ordered list of text-classification tasks and the scenario."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from cl_harness.config.instruction import InstructionConfig
from cl_harness.config.yaml_io import KeyPath, Source

Scenario = Literal["class_incremental", "task_incremental", "domain_incremental"]
SourceType = Literal["hub", "files", "saved", "demo"]

# Which source keys each source type takes (besides ``type``).
SOURCE_KEYS: dict[str, set[str]] = {
    "hub": {"name", "config", "revision", "train_split", "test_split"},
    "files": {"train_file", "test_file"},
    "saved": {"path", "train_split", "test_split"},
    "demo": {"seed", "train_examples_per_class", "test_examples_per_class"},
}



@dataclass
class SourceConfig:
    """Where a task's rows come from: a hub dataset, local files, a saved dataset or the demo generator."""

    type: SourceType = field(metadata={"help": "hub | files | saved | demo"})
    name: str | None = field(default=None, metadata={"help": "hub dataset id, e.g. ag_news"})
    config: str | None = field(default=None, metadata={"help": "hub dataset config name"})
    revision: str | None = field(default=None, metadata={"help": "hub dataset revision"})
    train_split: str | None = field(default="train", metadata={"help": "split name (hub, saved); null if absent"})
    test_split: str | None = field(default="test", metadata={"help": "split name (hub, saved); null if absent"})
    train_file: str | None = field(default=None, metadata={"help": "json, jsonl, csv or parquet file"})
    test_file: str | None = field(default=None, metadata={"help": "json, jsonl, csv or parquet file"})
    path: str | None = field(default=None, metadata={"help": "directory written by datasets.save_to_disk"})
    seed: int = field(default=0, metadata={"help": "demo generator seed"})
    train_examples_per_class: int = field(default=200, metadata={"ge": 1, "help": "demo: training sentences per class"})
    test_examples_per_class: int = field(default=50, metadata={"ge": 1, "help": "demo: test sentences per class"})

    def check(self, source: Source, path: KeyPath) -> None:
        allowed = SOURCE_KEYS[self.type]
        defaults = SourceConfig(type=self.type)
        for key in set().union(*SOURCE_KEYS.values()) - allowed:
            if getattr(self, key) != getattr(defaults, key):
                raise source.error(
                    path + (key,),
                    f"does not apply to a source of type {self.type!r}; it takes: {', '.join(sorted(allowed))}",
                )
        if self.type == "hub" and not self.name:
            raise source.error(path, "a hub source needs `name` (the dataset id)")
        if self.type == "saved" and not self.path:
            raise source.error(path, "a saved source needs `path` (a datasets.save_to_disk directory)")
        if self.type == "files" and not (self.train_file or self.test_file):
            raise source.error(path, "a files source needs `train_file`, `test_file` or both")
        if self.type in ("hub", "saved") and not (self.train_split or self.test_split):
            raise source.error(path, "at least one of train_split and test_split must be set")
        if self.type in ("hub", "saved") and self.train_split and self.train_split == self.test_split:
            raise source.error(path + ("test_split",), f"test_split {self.test_split!r} is also train_split; the task would "
                               "be tested on its training rows", hint="name a held-out split, or set test_split: null to "
                               "carve test_fraction of the training split")


@dataclass
class TaskConfig:
    """One task of a stream: its source, fields, label space and how to cut it."""

    name: str = field(metadata={"help": "unique within the stream; names the task's metrics (acc/<name>)"})
    source: SourceConfig = field(metadata={"help": "where the rows come from"})
    type: Literal["classification", "mlm"] = field(
        default="classification", metadata={"help": "classification | mlm (masked-LM training on unlabelled text)"}
    )
    text_field: str | list[str] = field(default="text", metadata={"help": "text column, or two for sentence pairs"})
    label_field: str = field(default="label", metadata={"help": "label column"})
    label_names: list[str] | str | None = field(
        default=None, metadata={"help": "label names, or a JSON file holding them; default: from the data"}
    )
    classes: list[str] | None = field(default=None, metadata={"help": "keep only these labels"})
    rename_labels: dict[str, str] | None = field(
        default=None,
        metadata={
            "help": "new names for labels, {old: new}; tasks whose labels share a name share an output unit, so this maps "
            "different tasks' classes onto one head (a split domain-incremental stream)"
        },
    )
    train_per_class: int | None = field(default=None, metadata={"ge": 1, "help": "sample at most N per class"})
    test_per_class: int | None = field(default=None, metadata={"ge": 1, "help": "sample at most N per class"})
    test_fraction: float = field(default=0.2, metadata={"gt": 0.0, "lt": 1.0, "help": "held out when one split is missing"})
    valid_per_class: int | None = field(
        default=None, metadata={"ge": 1, "help": "validation split: N examples per class carved (seeded) from the training data"}
    )
    valid_fraction: float | None = field(
        default=None, metadata={"gt": 0.0, "lt": 1.0, "help": "validation split: this fraction of each class's training data"}
    )
    split_seed: int = field(default=0, metadata={"help": "seed of sampling and of carving a missing split"})
    drop_unknown_labels: bool = field(default=False, metadata={"help": "drop rows whose label is not declared"})
    drop_empty_texts: bool = field(default=False, metadata={"help": "drop rows whose text is empty or blank (else refused)"})
    allow_test_only_labels: bool = field(
        default=False, metadata={"help": "accept test labels that no train example has (else refused)"}
    )
    train_examples: int | None = field(default=None, metadata={"ge": 1, "help": "mlm: sample at most N train texts"})
    test_examples: int | None = field(default=None, metadata={"ge": 1, "help": "mlm: sample at most N held-out texts"})
    instruction: InstructionConfig | None = field(
        default=None, metadata={"help": "generative backbones: prompt template and label texts (default template if absent)"}
    )

    def check(self, source: Source, path: KeyPath) -> None:
        fields = [self.text_field] if isinstance(self.text_field, str) else self.text_field
        if not 1 <= len(fields) <= 2:
            raise source.error(path + ("text_field",), "give one text field, or two for a sentence pair")
        defaults = TaskConfig(name=self.name, source=self.source)
        if self.type == "mlm":
            if len(fields) != 1:
                raise source.error(path + ("text_field",), "an mlm task reads one text field")
            for key in ("label_field", "label_names", "classes", "rename_labels", "train_per_class", "test_per_class", "drop_unknown_labels",
                        "allow_test_only_labels", "valid_per_class", "valid_fraction"):
                if getattr(self, key) != getattr(defaults, key):
                    raise source.error(
                        path + (key,), "does not apply to an mlm task (unlabelled text); use train_examples / test_examples"
                    )
        else:
            for key in ("train_examples", "test_examples"):
                if getattr(self, key) is not None:
                    raise source.error(path + (key,), "applies only to type: mlm; use train_per_class / test_per_class")
            self.check_fields(source, path)
            if self.label_names == []:
                raise source.error(path + ("label_names",), "lists no label names",
                                   hint="list the names, or leave label_names out to read them from the data")
        if self.valid_per_class is not None and self.valid_fraction is not None:
            raise source.error(path + ("valid_fraction",), "give valid_per_class or valid_fraction, not both")
        if self.classes is not None and len(set(self.classes)) != len(self.classes):
            raise source.error(path + ("classes",), "lists a class twice")
        for old, new in (self.rename_labels or {}).items():
            if not new.strip():
                raise source.error(path + ("rename_labels", old), "a new label name must not be empty")

    def check_fields(self, source: Source, path: KeyPath) -> None:
        """The text fields and the label field are different columns (a label read from the text makes every text a class)."""
        fields = self.text_fields
        if len(fields) == 2 and fields[0] == fields[1]:
            raise source.error(path + ("text_field", 1), f"text_field[1] {fields[1]!r} is text_field[0] again; "
                               "a sentence pair reads two different fields")
        if self.label_field in fields:
            which = "text_field" if len(fields) == 1 else f"text_field[{fields.index(self.label_field)}]"
            raise source.error(path + ("label_field",), f"label_field {self.label_field!r} is also {which}; the label and "
                               "the text must come from different fields", hint="set label_field to the column of the labels")

    @property
    def text_fields(self) -> list[str]:
        return [self.text_field] if isinstance(self.text_field, str) else list(self.text_field)


@dataclass
class StreamConfig:
    """An ordered stream of tasks under one continual-learning scenario."""

    name: str = field(metadata={"help": "the stream's name (the runs' `stream` tag)"})
    scenario: Scenario = field(metadata={"help": "how the heads are laid out and whether the task is known at test time"})
    tasks: list[TaskConfig] = field(metadata={"help": "the tasks, in training order (at least 2)"})
    description: str = field(default="", metadata={"help": "free text"})

    def check(self, source: Source, path: KeyPath) -> None:
        if len(self.tasks) < 2:
            raise source.error(path + ("tasks",), f"a stream needs at least 2 tasks, got {len(self.tasks)}")
        seen: dict[str, int] = {}
        for index, task in enumerate(self.tasks):
            if task.name in seen:
                raise source.error(
                    path + ("tasks", index, "name"), f"duplicate task name {task.name!r} (also task {seen[task.name]})"
                )
            seen[task.name] = index
        for index, task in enumerate(self.tasks):
            if task.type == "classification" and task.classes == []:
                need = "at least 2 classes (a class_incremental task needs 2)" if self.scenario == "class_incremental" else "at least one class"
                raise source.error(path + ("tasks", index, "classes"), f"list {need}",
                                   hint="or leave classes out to keep every label of the task")
        if all(task.type == "mlm" for task in self.tasks):
            raise source.error(path + ("tasks",), "a stream needs at least one classification task besides its mlm tasks")
