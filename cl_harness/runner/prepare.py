"""Everything checked and built before the first run trains: data, label space, tokens, strategies."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from cl_harness.config.loader import LoadedExperiment, LoadedStream, load_stream, make_variables
from cl_harness.data.benchmark import EncodedTask, LabelSpace, encode_tasks
from cl_harness.data.tasks import TaskData, load_stream_tasks, load_task, sample_per_class
from cl_harness.data.token_cache import TokenCache
from cl_harness.errors import HubUnreachableError
from cl_harness.models.backbone import check_tokenizer_matches, load_model_config, load_tokenizer
from cl_harness.models.masked_lm import MaskingSpec
from cl_harness.search.config import parse_search
from cl_harness.runner.grid import PlannedRun, plan_runs, resolve_orders
from cl_harness.strategies import default_registry
from cl_harness.strategies.registry import StrategyRegistry, StrategySpec


@dataclass
class CheckedExperiment:
    """A configuration whose data, strategies and tokenizer have all been validated."""

    loaded: LoadedExperiment
    tasks: list[TaskData]
    space: LabelSpace
    strategies: list[StrategySpec]
    tokenizer: object
    runs: list[PlannedRun]

    @property
    def scenario(self) -> str:
        return self.loaded.stream.config.scenario

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    @property
    def has_mlm(self) -> bool:
        return any(t.kind == "mlm" for t in self.tasks)

    def masking(self) -> MaskingSpec | None:
        """What masked-LM tasks need from the tokenizer; None for a stream without them."""
        if not self.has_mlm:
            return None
        tokenizer = self.tokenizer
        return MaskingSpec(tokenizer.mask_token_id, tuple(tokenizer.all_special_ids), len(tokenizer))

    def resolved_config(self) -> dict:
        data = self.loaded.resolved()
        data["strategies"] = [s.as_dict() for s in self.strategies]
        return data


@dataclass
class PreparedExperiment:
    """A checked experiment with every task tokenised once, shared by all its runs."""

    checked: CheckedExperiment
    encoded: list[EncodedTask]
    cache: TokenCache | None = None  # its hits and misses tell whether tokenising was skipped


@dataclass
class CheckedStream:
    """A stream file on its own: every task read and cut, except hub tasks while the hub is unreachable."""

    loaded: LoadedStream
    tasks: list[TaskData | None]  # None: a hub task that could not be read
    unreachable: HubUnreachableError | None  # the first hub failure, with the way out

    @property
    def space(self) -> LabelSpace:
        """Output units of the tasks that were read."""
        return LabelSpace.build(self.loaded.config.scenario, [t for t in self.tasks if t is not None])


def check_stream(path, data_root=None) -> CheckedStream:
    """Validate a stream file and read its tasks; once the hub is found unreachable, its other tasks are not tried."""
    loaded = load_stream(path, make_variables(data_root))
    tasks: list[TaskData | None] = []
    unreachable = None
    for index, task in enumerate(loaded.config.tasks):
        if unreachable is not None and task.source.type == "hub":
            tasks.append(None)
            continue
        try:
            tasks.append(load_task(loaded, index))
        except HubUnreachableError as error:
            unreachable = error
            tasks.append(None)
    return CheckedStream(loaded, tasks, unreachable)


def cap_test_per_class(task: TaskData, cap: int | None) -> TaskData:
    """Keep at most ``cap`` test examples per class (``training.eval_per_class``), chosen with a fixed seed."""
    if cap is None or task.kind == "mlm":
        return task
    kept = sample_per_class(task.test_labels, task.label_names, cap, "eval_per_class")
    return dataclasses.replace(
        task, test_texts=[task.test_texts[i] for i in kept], test_labels=[task.test_labels[i] for i in kept]
    )


def check_peft_composition(method: str, strategies: list[StrategySpec], loaded: LoadedExperiment) -> None:
    """Refuse a PEFT backbone under a strategy that inserts its own LoRA adapters (seq_lora, inc_lora, o_lora)."""
    if method == "none":
        return
    for index, spec in enumerate(strategies):
        if spec.adapts_model:
            raise loaded.source.error(
                ("strategies", index),
                f"strategy {spec.label!r} inserts its own LoRA adapters; it needs backbone.peft.method: none (got {method})",
                hint="remove backbone.peft, or use naive/replay/... with the PEFT backbone",
            )


def linear_layer_names(model_config) -> set[str]:
    """Attribute names of the encoder's ``nn.Linear`` layers, from its config alone (built on the meta device)."""
    import torch
    from transformers import AutoModel

    with torch.device("meta"):
        encoder = AutoModel.from_config(model_config)
    return {name.rsplit(".", 1)[-1] for name, module in encoder.named_modules() if isinstance(module, torch.nn.Linear)}


def check_lora_targets(loaded: LoadedExperiment, strategies: list[StrategySpec], model_config) -> None:
    """Every LoRA ``target_modules`` entry must name a linear layer of the backbone."""
    wanted: list[tuple[tuple, list[str]]] = []
    if loaded.config.backbone.peft.method == "lora":
        wanted.append((("backbone", "peft", "target_modules"), loaded.config.backbone.peft.target_modules))
    for index, spec in enumerate(strategies):
        for plugin in spec.plugins:
            if plugin.info is not None and plugin.info.prepare_model is not None:
                wanted.append((("strategies", index), plugin.config.target_modules))
    if not wanted:
        return
    available = linear_layer_names(model_config)
    for path, names in wanted:
        unknown = [n for n in names if n not in available]
        if unknown:
            raise loaded.source.error(
                path,
                f"target_modules {unknown} name no linear layer of the backbone; its linear layers: {', '.join(sorted(available))}",
            )


def check_mlm_tasks(loaded: LoadedExperiment, strategies: list[StrategySpec], tokenizer) -> None:
    """Masked-LM tasks need a [MASK] token, a strategy that trains task by task, and no per-task LoRA adapters."""
    mlm = [i for i, t in enumerate(loaded.stream.config.tasks) if t.type == "mlm"]
    if not mlm:
        return
    if tokenizer.mask_token_id is None:
        raise loaded.stream.source.error(("tasks", mlm[0], "type"), "the backbone's tokenizer has no mask token for an mlm task")
    for index, spec in enumerate(strategies):
        names = {p.name for p in spec.plugins}
        if spec.train_data != "current" or names & {"inc_lora", "o_lora"}:
            raise loaded.source.error(
                ("strategies", index),
                f"strategy {spec.label!r} cannot train a stream with mlm tasks: they are trained task by task on the shared "
                "backbone (or its single adapter), outside joint/cumulative data and per-task adapters",
                hint="use full fine-tuning, a backbone.peft method or seq_lora, with any plugins",
            )


def check_experiment(loaded: LoadedExperiment, registry: StrategyRegistry | None = None) -> CheckedExperiment:
    """Validate strategies, data and backbone without training or writing anything."""
    registry = registry or default_registry()
    config = loaded.config
    scenario = loaded.stream.config.scenario
    strategies = registry.parse_strategies(config.strategies, scenario, loaded.source)
    check_peft_composition(config.backbone.peft.method, strategies, loaded)
    orders = resolve_orders(config, [t.name for t in loaded.stream.config.tasks], loaded.source)
    runs = plan_runs(strategies, config.seeds, orders)
    tasks = [cap_test_per_class(t, config.training.eval_per_class) for t in load_stream_tasks(loaded.stream)]
    tokenizer = load_tokenizer(config.backbone)
    model_config = load_model_config(config.backbone)
    check_tokenizer_matches(tokenizer, model_config, config.backbone.name)
    check_lora_targets(loaded, strategies, model_config)
    check_mlm_tasks(loaded, strategies, tokenizer)
    parse_search(config.search, strategies, loaded.source, any(t.valid_labels for t in tasks))
    return CheckedExperiment(loaded, tasks, LabelSpace.build(scenario, tasks), strategies, tokenizer, runs)


def prepare_experiment(checked: CheckedExperiment, cache: TokenCache | None | str = "environment") -> PreparedExperiment:
    """Tokenise every task once, through the token cache (``$CL_HARNESS_CACHE`` unless ``cache`` is given)."""
    if cache == "environment":
        cache = TokenCache.from_environment(checked.tokenizer)
    max_length = checked.loaded.config.training.max_length
    encoded = encode_tasks(checked.tasks, checked.space, checked.tokenizer, max_length, cache)
    return PreparedExperiment(checked, encoded, cache)
