"""Everything checked and built before the first run trains: data, label space, tokens, strategies."""

from __future__ import annotations

import dataclasses
import functools
import time
from dataclasses import dataclass, field

from cl_harness.config.experiment import BackboneConfig, ExperimentConfig, TrainingConfig
from cl_harness.config.loader import LoadedExperiment, LoadedStream, load_stream, make_variables
from cl_harness.config.limits import check_printed_name
from cl_harness.data.benchmark import EncodedTask, LabelSpace
from cl_harness.data.encoding import encode_texts
from cl_harness.data.tasks import TaskData, check_shared_labels, load_stream_tasks, load_task, sample_per_class
from cl_harness.data.token_cache import TokenCache
from cl_harness.errors import ConfigError, HubUnreachableError, short_repr
from cl_harness.data.instruction import EncodedInstructionTask, InstructionSettings, encode_instruction_tasks
from cl_harness.grid.plan import PlannedRun, plan_runs, resolve_orders
from cl_harness.models.generative import GenerativeModelFactory, context_length, load_generative_config, load_generative_tokenizer
from cl_harness.models.head_init import init_heads_from_label_names
from cl_harness.models.backbone import check_tokenizer_covers, check_tokenizer_matches, load_model_config, load_tokenizer
from cl_harness.runner.run import ModelFactory, RunPlan
from cl_harness.grid.input_checks import check_checkpoint_dir, check_device, check_max_length, position_limit
from cl_harness.report.glance import SUMMARY_MEASURES
from cl_harness.tracking.schema import RUN_METRICS, best_valid_acc_metric, summary_key, task_metric_keys
from cl_harness.strategies import default_registry
from cl_harness.strategies.common.lora import resolve_targets
from cl_harness.strategies.registry import StrategyRegistry, StrategySpec
from cl_harness.tasks import default_kinds
from cl_harness.tasks.instruction import NAME as INSTRUCTION
from cl_harness.tasks.instruction import InstructionResources
from cl_harness.tasks.registry import TaskKindRegistry


@dataclass
class CheckedExperiment:
    """A configuration whose data, strategies and tokenizer have all been validated."""

    loaded: LoadedExperiment
    tasks: list[TaskData]
    space: LabelSpace
    strategies: list[StrategySpec]
    tokenizer: object
    runs: list[PlannedRun]
    kinds: TaskKindRegistry = field(default_factory=default_kinds)
    generative_context: int | None = None  # generative backbones: the LM's context length (prompts must fit)
    generative_encoded: list[EncodedInstructionTask] | None = None  # generative backbones: the tasks' prompt rows, once

    @property
    def config(self) -> ExperimentConfig:
        return self.loaded.config

    @property
    def generative(self) -> bool:
        """Instruction tasks on a causal or seq2seq LM (models/generative.py), not an encoder with heads."""
        return self.loaded.config.backbone.kind != "encoder"

    @property
    def training(self) -> TrainingConfig:
        return self.loaded.config.training

    @property
    def backbone(self) -> BackboneConfig:
        return self.loaded.config.backbone

    @property
    def name(self) -> str:
        return self.loaded.config.name

    @property
    def stream_name(self) -> str:
        return self.loaded.stream.config.name

    @property
    def scenario(self) -> str:
        return self.loaded.stream.config.scenario

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def kind_resources(self) -> dict:
        """What the stream's task kinds need from the tokenizer (e.g. mlm: its masking spec)."""
        return self.kinds.resources([t.kind for t in self.tasks], self.tokenizer)

    def resolved_config(self) -> dict:
        data = self.loaded.resolved()
        data["strategies"] = [s.as_dict() for s in self.strategies]
        tuned = {r.strategy.label: dict(r.training) for r in self.runs if r.training}
        for entry in data["strategies"]:  # a strategy's own training values (a search's best), beside its plugins
            if entry["name"] in tuned:
                entry["training"] = tuned[entry["name"]]
        return data

    def with_runs(self, runs: list[PlannedRun]) -> CheckedExperiment:
        """The experiment planned as ``runs`` (e.g. with a search's best parameters), its strategies taken from them."""
        strategies = list({r.strategy.label: r.strategy for r in runs}.values())
        return dataclasses.replace(self, strategies=strategies, runs=list(runs))


@dataclass
class PreparedExperiment:
    """A checked experiment with every task tokenised once, shared by all its runs."""

    checked: CheckedExperiment
    encoded: list[EncodedTask]
    cache: TokenCache | None = None  # its hits and misses tell whether tokenising was skipped
    resources: dict = field(default_factory=dict)  # per task kind: what it needs from the tokenizer
    tokenise_seconds: float = 0.0  # wall time of tokenising (or reading from the token cache), logged on the parent run

    # One hop to what runs read (``experiment.training.lr``) instead of ``experiment.checked.loaded.config.training.lr``.
    @property
    def config(self) -> ExperimentConfig:
        return self.checked.config

    @property
    def training(self) -> TrainingConfig:
        return self.checked.training

    @property
    def runs(self) -> list[PlannedRun]:
        return self.checked.runs

    @property
    def task_names(self) -> list[str]:
        return self.checked.task_names

    @property
    def scenario(self) -> str:
        return self.checked.scenario

    def model_factory(self) -> ModelFactory | GenerativeModelFactory:
        """How every run of the grid builds its model."""
        checked = self.checked
        if checked.generative:
            return GenerativeModelFactory(checked.backbone, checked.tokenizer, checked.training.precision)
        head_init = None
        if checked.backbone.head_init == "label_names":
            head_init = functools.partial(
                init_heads_from_label_names, tokenizer=checked.tokenizer, space=checked.space, max_length=checked.training.max_length
            )
        kinds = [(k.prepare_model, self.resources.get(k.name)) for k in checked.kinds.used_by([t.kind for t in checked.tasks])
                 if k.prepare_model is not None]
        return ModelFactory(checked.backbone, checked.space.head_sizes, checked.scenario, checked.training.precision, kinds, head_init)

    def with_runs(self, runs: list[PlannedRun]) -> PreparedExperiment:
        """The same tokenised experiment, planned as ``runs``."""
        return dataclasses.replace(self, checked=self.checked.with_runs(runs))

    def run_plan(self, planned: PlannedRun) -> RunPlan:
        """What one planned run needs, and nothing more of the experiment (its own training values applied)."""
        training = dataclasses.replace(self.training, **dict(planned.training)) if planned.training else self.training
        return RunPlan(
            planned.strategy, planned.seed, planned.order_index, [self.encoded[i] for i in planned.order], self.model_factory(),
            training, self.scenario, self.checked.kinds, self.resources,
            position=f"{self.runs.index(planned) + 1}/{len(self.runs)}" if planned in self.runs else "",
            checkpoint_every_s=self.config.checkpoint_every_s,
        )


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


def check_task_names(stream: LoadedStream) -> None:
    """Each task name is a printable name, and its per-task MLflow keys (``acc/<task>``, ``valid_acc/<task>``, ... from
    ``tracking.schema``) are its own: not another task's once sanitised, not a run metric (task ``""`` gives ``acc``)."""
    source = stream.source
    check_printed_name(stream.config.name, source, ("name",), "stream name")
    owners: dict[str, int] = {}
    for index, task in enumerate(stream.config.tasks):
        path = ("tasks", index, "name")
        check_printed_name(task.name, source, path, "task name")
        for key in dict.fromkeys(task_metric_keys(task.name).values()):
            if key in RUN_METRICS:
                raise source.error(
                    path, f"task name {short_repr(task.name, 60)} gives the MLflow key {key!r}, a metric of the whole run: "
                    "the task's scores would be logged into it",
                    hint="per-task keys are <metric>/<task name>: give the task a name of letters or digits, other than seen_avg",
                )
            if key in owners and owners[key] != index:
                other = stream.config.tasks[owners[key]].name
                raise source.error(
                    path, f"task name {short_repr(task.name, 60)} gives the MLflow key {key!r}, as task {owners[key]} does "
                    f"(named {short_repr(other, 60)})",
                    hint="give the tasks names that differ in letters, digits, '-', '_' or '.'",
                )
            owners[key] = index


def check_experiment_names(loaded: LoadedExperiment) -> None:
    """The strategy entries' ``name`` labels and the stream's task names are printable names, the tasks' MLflow keys
    their own (``check_task_names``): checked before any of them is used (the loader checks the experiment's names)."""
    config = loaded.config
    for index, entry in enumerate(config.strategies):
        if isinstance(entry, dict) and isinstance(entry.get("name"), str):
            check_printed_name(entry["name"], loaded.source, ("strategies", index, "name"), "strategy label")
    check_task_names(loaded.stream)


def strategy_keys(label: str) -> list[str]:
    """The parent run's MLflow keys that carry a strategy's label: ``summary/<measure>/<label>`` and the search's
    ``best_valid_acc.<label>``."""
    return [summary_key(measure, label) for measure in SUMMARY_MEASURES] + [best_valid_acc_metric(label)]


def check_strategy_labels(loaded: LoadedExperiment, strategies: list[StrategySpec]) -> None:
    """Each strategy label is a printable name whose parent-run keys are its own: two labels that differ only in
    characters a key drops (``naive`` and ``naive/``) would share ``summary/acc/naive``, one strategy's mean lost."""
    owners: dict[str, int] = {summary_key(measure, ""): -1 for measure in SUMMARY_MEASURES}  # a label of no usable part
    for index, spec in enumerate(strategies):
        check_printed_name(spec.label, loaded.source, ("strategies", index), "strategy label")
        for key in strategy_keys(spec.label):
            if key in owners and owners[key] != index:
                owner = ("the measure's key without a strategy" if owners[key] < 0
                         else f"strategy {owners[key]} does (labelled {short_repr(strategies[owners[key]].label, 60)})")
                raise loaded.source.error(
                    ("strategies", index),
                    f"strategy label {short_repr(spec.label, 60)} gives the parent run's MLflow key {key!r}, as {owner}",
                    hint="give each strategy a `name` that differs in letters, digits, '-', '_' or '.'",
                )
            owners[key] = index


def check_stream(path, data_root=None) -> CheckedStream:
    """Validate a stream file and read its tasks; once the hub is found unreachable, its other tasks are not tried."""
    loaded = load_stream(path, make_variables(data_root))
    check_task_names(loaded)
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
    check_shared_labels(loaded, tasks)
    return CheckedStream(loaded, tasks, unreachable)


def cap_test_per_class(task: TaskData, cap: int | None, kinds: TaskKindRegistry | None = None) -> TaskData:
    """Keep at most ``cap`` test examples per class (``training.eval_per_class``) of a labelled task, chosen with a fixed seed."""
    if cap is None or not (kinds or default_kinds()).get(task.kind).labelled:
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


def linear_layer_names(model_config, kind: str = "encoder") -> set[str]:
    """Attribute names of the backbone's ``nn.Linear`` layers, from its config alone (built on the meta device)."""
    import torch
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForSeq2SeqLM

    loader = {"encoder": AutoModel, "causal_lm": AutoModelForCausalLM, "seq2seq": AutoModelForSeq2SeqLM}[kind]
    with torch.device("meta"):
        backbone = loader.from_config(model_config)
    return {name.rsplit(".", 1)[-1] for name, module in backbone.named_modules() if isinstance(module, torch.nn.Linear)}


def check_lora_targets(loaded: LoadedExperiment, strategies: list[StrategySpec], model_config) -> None:
    """Every LoRA ``target_modules`` entry must name a linear layer of the backbone (the family default must exist)."""
    adapting = [(index, plugin) for index, spec in enumerate(strategies) for plugin in spec.plugins
                if plugin.info is not None and plugin.info.prepare_model is not None]
    peft = loaded.config.backbone.peft
    if peft.method != "lora" and not adapting:
        return
    available = linear_layer_names(model_config, loaded.config.backbone.kind)
    wanted: list[tuple[tuple, list[str]]] = [(("backbone", "peft", "target_modules"), peft.target_modules)] if peft.method == "lora" else []
    for index, plugin in adapting:
        try:
            wanted.append((("strategies", index), resolve_targets(plugin.config, available)))
        except ConfigError as error:
            raise loaded.source.error(("strategies", index), error.message, error.hint) from None
    for path, names in wanted:
        unknown = [n for n in names if n not in available]
        if unknown:
            raise loaded.source.error(
                path,
                f"target_modules {unknown} name no linear layer of the backbone; its linear layers: {', '.join(sorted(available))}",
            )


def check_prompt_length(loaded: LoadedExperiment, model_config) -> None:
    """Prompt tuning puts ``num_virtual_tokens`` soft tokens before every input: with ``training.max_length`` they must fit
    the backbone's position embeddings."""
    peft = loaded.config.backbone.peft
    limit = position_limit(model_config)
    if peft.method != "prompt_tuning" or limit is None:
        return
    max_length = loaded.config.training.max_length
    if peft.num_virtual_tokens + max_length > limit:
        raise loaded.source.error(
            ("backbone", "peft", "num_virtual_tokens"),
            f"{peft.num_virtual_tokens} virtual tokens + training.max_length {max_length} = "
            f"{peft.num_virtual_tokens + max_length} positions; the backbone has {limit} (from its config)",
            hint=f"keep backbone.peft.num_virtual_tokens + training.max_length <= {limit}",
        )


def check_task_kinds(loaded: LoadedExperiment, strategies: list[StrategySpec], tokenizer, kinds: TaskKindRegistry) -> None:
    """Each task kind of the stream checks what it needs (e.g. mlm: a [MASK] token, strategies that train task by task)."""
    for kind in kinds.used_by([t.type for t in loaded.stream.config.tasks]):
        if kind.check is not None:
            kind.check(loaded, strategies, tokenizer)


def shares_prefix(loaded: LoadedExperiment) -> bool:
    """Whether the grid's runs may share task 1 (``prefix_sharing``): every task trained by the strategy's loop
    (classification, or its prompted form on a language model), none with extra per-task scores (exact match)."""
    config = loaded.config
    tasks = loaded.stream.config.tasks
    trained_in_loop = all(t.type == "classification" for t in tasks)
    extra_scores = any(t.instruction is not None and t.instruction.exact_match for t in tasks) and config.backbone.kind != "encoder"
    return config.prefix_sharing and trained_in_loop and not extra_scores


def plan_and_read(loaded: LoadedExperiment, strategies: list[StrategySpec], kinds: TaskKindRegistry) -> tuple[list[PlannedRun], list[TaskData]]:
    """The planned runs, the machine checks, then every task read and cut (encoder and generative alike)."""
    config = loaded.config
    orders = resolve_orders(config, [t.name for t in loaded.stream.config.tasks], loaded.source)
    runs = plan_runs(strategies, config.seeds, orders, share_prefix=shares_prefix(loaded))
    check_device(loaded)
    check_checkpoint_dir(loaded)
    tasks = [cap_test_per_class(t, config.training.eval_per_class, kinds) for t in load_stream_tasks(loaded.stream)]
    return runs, tasks


def check_prompt_settings(loaded: LoadedExperiment, strategies: list[StrategySpec]) -> None:
    """Instruction blocks need a generative backbone; strategies that put demonstrations in prompts must agree on them,
    and score test prompts only (a validation split is scored without demonstrations)."""
    tasks = loaded.stream.config.tasks
    if loaded.config.backbone.kind == "encoder":
        for index, task in enumerate(tasks):
            if task.instruction is not None:
                raise loaded.stream.source.error(
                    ("tasks", index, "instruction"), "applies to generative backbones only; the experiment's backbone.kind is encoder",
                    hint="set backbone.kind: causal_lm or seq2seq, or remove the instruction block",
                )
    shown = {s.demonstrations for s in strategies} - {None}
    if len(shown) > 1:
        raise loaded.source.error(("strategies",), "give every strategy with in-context demonstrations the same shots and seed")
    validated = [i for i, t in enumerate(tasks) if t.valid_per_class is not None or t.valid_fraction is not None]
    if shown and validated:
        raise loaded.stream.source.error(
            ("tasks", validated[0]), "in-context demonstrations are drawn for test prompts only; this task has a validation split",
            hint="remove valid_per_class / valid_fraction, or the in_context strategy",
        )


def encode_generative(checked: CheckedExperiment) -> list[EncodedInstructionTask]:
    """Prompt/answer rows of every task (with demonstrations when a strategy puts them in prompts), tokenised once and
    kept in ``checked.generative_encoded``."""
    if checked.generative_encoded is not None:
        return checked.generative_encoded
    loaded = checked.loaded
    shots, seed = next((s.demonstrations for s in checked.strategies if s.demonstrations), (0, 0))
    settings = InstructionSettings(
        configs=[t.instruction for t in loaded.stream.config.tasks],
        source=loaded.stream.source,
        max_text_tokens=loaded.config.training.max_length,
        context=checked.generative_context,
        seq2seq=loaded.config.backbone.kind == "seq2seq",
        shots=shots,
        seed=seed,
    )
    checked.generative_encoded = encode_instruction_tasks(checked.tasks, checked.space, checked.tokenizer, settings)
    return checked.generative_encoded


def check_experiment(loaded: LoadedExperiment, registry: StrategyRegistry | None = None) -> CheckedExperiment:
    """Validate strategies, data and backbone without training or writing anything."""
    registry = registry or default_registry()
    kinds = default_kinds()
    config = loaded.config
    scenario = loaded.stream.config.scenario
    check_experiment_names(loaded)
    strategies = registry.parse_strategies(config.strategies, scenario, loaded.source, backbone_kind=config.backbone.kind)
    check_strategy_labels(loaded, strategies)
    check_prompt_settings(loaded, strategies)
    check_peft_composition(config.backbone.peft.method, strategies, loaded)
    runs, tasks = plan_and_read(loaded, strategies, kinds)
    if config.backbone.kind != "encoder":  # instruction tasks on a causal or seq2seq LM
        with loaded.source.locating():
            tokenizer = load_generative_tokenizer(config.backbone)
            model_config = load_generative_config(config.backbone)
        check_lora_targets(loaded, strategies, model_config)
        checked = CheckedExperiment(
            loaded, tasks, LabelSpace.build(scenario, tasks), strategies, tokenizer, runs, kinds, generative_context=context_length(model_config),
        )
        encode_generative(checked)  # every template, label text and prompt length checked before any run
        return checked
    with loaded.source.locating():  # backbone errors at the experiment's backbone line
        tokenizer = load_tokenizer(config.backbone)
        model_config = load_model_config(config.backbone)
        check_tokenizer_matches(tokenizer, model_config, config.backbone.name)
        for task in tasks:  # a tokenizer that reads every text of a task as its unknown token is refused
            check_tokenizer_covers(tokenizer, task.train_texts, config.backbone.name, f"task {task.name!r}")
    check_lora_targets(loaded, strategies, model_config)
    check_task_kinds(loaded, strategies, tokenizer, kinds)
    check_max_length(loaded, model_config, tokenizer)
    check_prompt_length(loaded, model_config)
    return CheckedExperiment(loaded, tasks, LabelSpace.build(scenario, tasks), strategies, tokenizer, runs, kinds)


def prepare_experiment(checked: CheckedExperiment, cache: TokenCache | None | str = "environment") -> PreparedExperiment:
    """Tokenise every task once, through the token cache (``$CL_HARNESS_CACHE`` unless ``cache`` is given)."""
    if checked.generative:  # prompt rows, tokenised at check time; scoring decodes with the tokenizer
        return PreparedExperiment(checked, encode_generative(checked), None, {INSTRUCTION: InstructionResources(checked.tokenizer)})
    if cache == "environment":
        cache = TokenCache.from_environment(checked.tokenizer)
    max_length = checked.training.max_length

    def encode(texts: list) -> object:
        if cache is None:
            return encode_texts(checked.tokenizer, texts, max_length)
        return cache.encode(texts, max_length, lambda t, n: encode_texts(checked.tokenizer, t, n))

    started = time.perf_counter()
    encoded = checked.kinds.encode_tasks(checked.tasks, checked.space, encode)
    return PreparedExperiment(checked, encoded, cache, checked.kind_resources(), time.perf_counter() - started)
