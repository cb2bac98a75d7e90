"""Schema of an experiment YAML: stream, backbone, training settings, strategies, seeds and tracking."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from cl_harness.config.yaml_io import KeyPath, Source

BUNDLED_MINILM = "bundled:all-MiniLM-L6-v2"
BUNDLED_SMOLLM2 = "bundled:smollm2-135m-instruct"  # generative (backbone.kind causal_lm): models/generative.py
BUNDLED_KINDS = {BUNDLED_MINILM: "encoder", BUNDLED_SMOLLM2: "causal_lm"}  # the backbone kind of each bundled model
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
PRECISIONS = ("fp32", "bf16", "fp16")
BACKBONE_KINDS = ("encoder", "causal_lm", "seq2seq")  # what models/ loads; strategies declare which they run on



@dataclass
class PeftConfig:
    """Parameter-efficient fine-tuning of the backbone; the heads always train. ``none``: full fine-tuning."""

    method: Literal["none", "lora", "bitfit", "prompt_tuning", "adapter"] = field(
        default="none", metadata={"help": "none (full fine-tuning) | lora | bitfit | prompt_tuning | adapter"}
    )
    lora_rank: int = field(default=8, metadata={"ge": 1, "help": "lora: rank r of the update B A"})
    lora_alpha: float = field(default=16.0, metadata={"gt": 0.0, "help": "lora: the update is scaled by alpha / r"})
    lora_dropout: float = field(default=0.0, metadata={"ge": 0.0, "lt": 1.0, "help": "lora: dropout on the adapter input"})
    target_modules: list[str] = field(
        default_factory=lambda: ["query", "value"], metadata={"help": "lora: names of the linear layers to adapt"}
    )
    num_virtual_tokens: int = field(default=20, metadata={"ge": 1, "help": "prompt_tuning: soft prompt length"})

    def check(self, source: Source, path: KeyPath) -> None:
        if self.method == "adapter":
            raise source.error(
                path + ("method",),
                "peft offers no bottleneck (Houlsby/Pfeiffer) adapters for encoders; allowed: none, lora, bitfit, prompt_tuning",
                hint="use method: lora, or a lora strategy (seq_lora, inc_lora, o_lora)",
            )
        if not self.target_modules:
            raise source.error(path + ("target_modules",), "list at least one module name, e.g. [query, value]")


@dataclass
class BackboneConfig:
    """The pretrained encoder: the bundled MiniLM, a local model directory or a hub id."""

    name: str = field(default=BUNDLED_MINILM, metadata={"help": "bundled:all-MiniLM-L6-v2, a directory or a hub id"})
    pooling: str = field(default="mean", metadata={"help": "cls | mean"})
    revision: str | None = field(default=None, metadata={"help": "hub revision (branch, tag or commit) of `name`; null: the default branch"})
    peft: PeftConfig = field(default_factory=PeftConfig, metadata={"help": "parameter-efficient fine-tuning of the backbone"})
    kind: Literal["encoder", "causal_lm", "seq2seq"] = field(
        default="encoder", metadata={"help": "encoder (+ heads) | causal_lm | seq2seq (instruction tasks, label-text answers)"}
    )
    gguf_file: str | None = field(default=None, metadata={"help": "GGUF weights file inside `name` (needs the gguf package)"})
    head_init: Literal["random", "label_names"] = field(
        default="random", metadata={"help": "encoder heads: random | label_names (each class row from its name's embedding)"}
    )

    def check(self, source: Source, path: KeyPath) -> None:
        if self.pooling not in ("cls", "mean"):
            raise source.error(path + ("pooling",), f"must be cls or mean, got {self.pooling!r}")
        if self.kind != "encoder" and self.head_init != "random":
            raise source.error(path + ("head_init",), f"applies to encoder backbones only (backbone.kind is {self.kind})")
        if self.gguf_file is not None and self.kind == "encoder":
            raise source.error(path + ("gguf_file",), "GGUF weights load as causal_lm backbones; set backbone.kind: causal_lm")
        bundled_kind = BUNDLED_KINDS.get(self.name)
        if bundled_kind is not None and self.kind != bundled_kind:
            other = next(name for name, kind in BUNDLED_KINDS.items() if kind != bundled_kind)
            raise source.error(path + ("kind",), f"{self.name} holds {bundled_kind} weights; backbone.kind must be {bundled_kind}, "
                               f"got {self.kind}", hint=f"set backbone.kind: {bundled_kind}, or name a model of kind {self.kind} "
                               f"(a folder or hub id{', or ' + other if BUNDLED_KINDS[other] == self.kind else ''})")
        if bundled_kind is not None:  # their weights ship in a package: nothing to choose
            for key in ("gguf_file", "revision"):
                if getattr(self, key) is not None:
                    raise source.error(path + (key,), f"the bundled backbone {self.name} comes with its own weights; leave {key} out",
                                       hint="name a folder or a hub id to choose a weights file or revision")
        if self.kind != "encoder" and self.peft.method != "none":
            raise source.error(
                path + ("peft", "method"), "generative backbones take LoRA through the seq_lora / inc_lora / o_lora strategies",
                hint="remove backbone.peft and list e.g. {o_lora: {lora_rank: 8}} under strategies",
            )


@dataclass
class TrainingConfig:
    """Optimisation and evaluation settings shared by every strategy of the experiment."""

    epochs: int = field(default=1, metadata={"ge": 1, "help": "passes over each task's training data"})
    batch_size: int = field(default=16, metadata={"ge": 1, "help": "training examples per step"})
    eval_batch_size: int = field(default=64, metadata={"ge": 1, "help": "most examples scored at once"})
    lr: float = field(default=5e-5, metadata={"gt": 0.0, "help": "AdamW learning rate"})
    weight_decay: float = field(default=0.0, metadata={"ge": 0.0, "help": "AdamW weight decay"})
    max_length: int = field(default=128, metadata={"ge": 4, "le": 8192, "help": "tokens kept of each text; batches are trimmed to their longest text"})
    eval_per_class: int | None = field(default=None, metadata={"ge": 1, "help": "cap test examples per class"})
    length_bucketing: bool = field(default=False, metadata={"help": "train on batches of similar length (evaluation always is)"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    precision: str = field(default="fp32", metadata={"help": "fp32 | bf16 | fp16 (autocast of the backbone; fp16 with loss scaling)"})
    probe: bool = field(default=False, metadata={"help": (
        "after every step, fit a linear probe (logistic regression) on the frozen features of each trained task's training "
        "split and score its test split: the probing matrix (probe_acc/<task>, probe_accuracy_matrix.json), whether the "
        "representation keeps what the head forgets. Features: an encoder's pooled output; a causal LM's last hidden state "
        "at the prompt's last token; a seq2seq model's encoder states averaged over the prompt. Tasks with class labels only")})

    def check(self, source: Source, path: KeyPath) -> None:
        if self.precision not in PRECISIONS:
            raise source.error(path + ("precision",), f"must be fp32, bf16 or fp16, got {self.precision!r}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise source.error(path + ("device",), f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")


@dataclass
class TrackingConfig:
    """Where results go: an MLflow tracking URI (default: the local SQLite store) and experiment name."""

    uri: str | None = field(default=None, metadata={"help": f"default {DEFAULT_TRACKING_URI} or $MLFLOW_TRACKING_URI"})
    experiment: str | None = field(default=None, metadata={"help": "MLflow experiment; default: the experiment name"})


@dataclass
class ExperimentConfig:
    """One experiment: a stream, a backbone, training settings and the strategies and seeds to run."""

    name: str = field(metadata={"help": "the MLflow experiment's name (unless tracking.experiment), and the run folder's"})
    stream: str = field(metadata={"help": "stream YAML, relative to this file"})
    backbone: BackboneConfig = field(default_factory=BackboneConfig, metadata={"help": "the pretrained model; or just its name"})
    training: TrainingConfig = field(default_factory=TrainingConfig, metadata={"help": "optimisation and evaluation settings"})
    strategies: list[Any] = field(default_factory=lambda: ["naive"], metadata={"help": "strategy specs", "example": "[naive, ewc]"})
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"example": "[0, 1, 2]", "help": "every strategy runs once per seed (and order)"})
    orders: list[list[str]] | None = field(default=None, metadata={
        "help": "task orders to run, each naming every task", "example": "[[a, b], [b, a]]"})
    permutations: int | None = field(default=None, metadata={"ge": 1, "help": "run the stream order plus N-1 random orders"})
    order_seed: int = field(default=0, metadata={"help": "seed that draws the random orders"})
    tracking: TrackingConfig = field(default_factory=TrackingConfig, metadata={"help": "where the results go"})
    checkpoint_dir: str = field(default="runs", metadata={"help": "run folders with checkpoints, relative to the cwd"})
    checkpoint_every_s: float = field(default=60.0, metadata={"ge": 0.0, "help": (
        "a run checkpoints after a task once this many seconds have passed since its last checkpoint (or its start); "
        "0: after every task. A killed run resumes from its last checkpoint and retrains the tasks after it, with the "
        "same results")})
    description: str = field(default="", metadata={"help": "free text, recorded in config.yaml"})
    search: Any = field(default=None, metadata={"help": "per-strategy hyperparameter search (see `search`)"})
    prefix_sharing: bool = field(default=True, metadata={"help": (
        "train task 1 once per seed and order for the strategies that train it as naive does, and fork it into their "
        "runs (same results). --no-prefix-sharing sets false")})

    def check(self, source: Source, path: KeyPath) -> None:
        if not self.strategies:
            raise source.error(path + ("strategies",), "list at least one strategy")
        if not self.seeds:
            raise source.error(path + ("seeds",), "list at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise source.error(path + ("seeds",), "lists a seed twice")
        if self.orders == []:
            raise source.error(path + ("orders",), "list at least one order, or leave `orders` out to train in the stream's order")
        if self.orders is not None and self.permutations is not None:
            raise source.error(path + ("permutations",), "give either `orders` or `permutations`, not both")
