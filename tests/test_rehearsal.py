"""Rehearsal strategies: memories stay bounded and balanced, replayed data reaches the loss, projections hold.

Spy plugins below are attached to a run by dotted path (``test_rehearsal:TargetSpy``), after or
before the strategy's own plugin, so they see the minibatches, losses and gradients it produces.
In the tiny class-incremental stream task 1 holds units 0 and 1, task 2 units 2 and 3, task 3 4 and 5.
"""

from __future__ import annotations

from collections import Counter
from types import SimpleNamespace

import pytest
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training.plugins import AGEMPlugin, GEMPlugin
from torch import nn

from cl_harness.config.yaml_io import Source
from cl_harness.errors import ConfigError
from cl_harness.models.classifier import MASKED_LOGIT, TextClassifier
from cl_harness.strategies import default_registry
from cl_harness.strategies.agem import HarnessAGEMPlugin, flat_grad
from cl_harness.strategies.common.buffers import ReservoirBuffer
from cl_harness.strategies.der import DERPlugin, masked_logit_mse

REGISTRY = default_registry()


# -- spies -------------------------------------------------------------------------------------
def task_of(strategy) -> int:
    return strategy.experience.current_experience


def plugin_with(strategy, attribute: str):
    return next(p for p in strategy.plugins if hasattr(p, attribute))


class TargetSpy(SupervisedPlugin):
    """The targets and inputs of every minibatch that enters the loss, by task."""

    def __init__(self):
        super().__init__()
        self.targets, self.inputs, self.model_ids, self.first_weights = {}, {}, {}, {}

    def before_training_exp(self, strategy, **kwargs):
        self.model_ids[task_of(strategy)] = id(strategy.model)
        self.first_weights[task_of(strategy)] = {n: p.detach().clone() for n, p in strategy.model.named_parameters()}

    def before_backward(self, strategy, **kwargs):
        self.targets.setdefault(task_of(strategy), []).append(strategy.mb_y.tolist())
        self.inputs.setdefault(task_of(strategy), []).append(strategy.mb_x.detach().cpu().clone())


class MemorySpy(SupervisedPlugin):
    """Size, class counts and task counts of the Avalanche memory (``storage_policy``) after each task."""

    def __init__(self):
        super().__init__()
        self.history = []

    def after_training_exp(self, strategy, **kwargs):
        memory = plugin_with(strategy, "storage_policy").storage_policy.buffer
        self.history.append(
            (len(memory), Counter(int(y) for y in memory.targets), Counter(int(t) for t in memory.targets_task_labels))
        )


class LossBefore(SupervisedPlugin):
    """The loss before the strategy's plugin adds to it (place this spy before it)."""

    def __init__(self):
        super().__init__()
        self.losses = {}

    def before_backward(self, strategy, **kwargs):
        self.losses.setdefault(task_of(strategy), []).append(float(strategy.loss))


class LossAfter(LossBefore):
    """The loss after the strategy's plugin added to it (place this spy after it)."""


class OutputSpy(SupervisedPlugin):
    """The minibatch logits the base loop's criterion sees."""

    def __init__(self):
        super().__init__()
        self.outputs = {}

    def before_backward(self, strategy, **kwargs):
        self.outputs.setdefault(task_of(strategy), []).append(strategy.mb_output.detach().cpu())


class LoaderSpy(SupervisedPlugin):
    """Whether a MIR plugin has a replay loader at the start of each task."""

    def __init__(self):
        super().__init__()
        self.has_loader = []

    def before_training_exp(self, strategy, **kwargs):
        self.has_loader.append(plugin_with(strategy, "replay_loader").replay_loader is not None)


def memory_alignment(strategy) -> torch.Tensor:
    """Dot products of the model's current gradient with each memory gradient of A-GEM or GEM. ``(n_memories,)``"""
    grad = flat_grad(strategy.model)  # (n_parameters,)
    for plugin in strategy.plugins:
        if isinstance(plugin, AGEMPlugin) and plugin.buffers:
            reference = plugin.reference_gradients[None]  # (1, n_parameters)
            break
        if isinstance(plugin, GEMPlugin) and strategy.clock.train_exp_counter > 0:
            reference = plugin.G  # (n_past_tasks, n_parameters)
            break
    else:
        return torch.empty(0)
    return (reference @ grad) / (reference.norm(dim=1) * grad.norm()).clamp(min=1e-12)  # cosines


class RawGradSpy(SupervisedPlugin):
    """Cosines between the unprojected gradient and the memory gradients (place before the strategy)."""

    def __init__(self):
        super().__init__()
        self.cosines = []

    def after_backward(self, strategy, **kwargs):
        self.cosines.extend(memory_alignment(strategy).tolist())


class ProjectedGradSpy(RawGradSpy):
    """Cosines between the applied (projected) gradient and the memory gradients (place after the strategy)."""


def spied(entry: dict, before: tuple[str, ...] = (), after: tuple[str, ...] = ("TargetSpy",)) -> dict:
    return {
        "name": "spied",
        "plugins": [{f"test_rehearsal:{s}": {}} for s in before] + [entry] + [{f"test_rehearsal:{s}": {}} for s in after],
    }


def spy(strategy, cls):
    return next(p for p in strategy.plugins if type(p) is cls)


def rows(inputs: torch.Tensor) -> list[bytes]:
    return [row.numpy().tobytes() for row in inputs]


# -- replay ------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["reservoir", "class_balanced", "experience_balanced"])
def test_replay_memory_is_bounded_and_balanced_after_every_task(tiny_run, policy):
    result, strategy = tiny_run(spied({"replay": {"mem_size": 10, "policy": policy}}, after=("MemorySpy",)), tasks=3)
    assert result.status == "FINISHED", result.error
    history = spy(strategy, MemorySpy).history
    assert [size for size, _, _ in history] == [10, 10, 10]
    for _, classes, tasks in history:
        if policy == "class_balanced":
            assert max(classes.values()) - min(classes.values()) <= 1, classes
        if policy == "experience_balanced":
            assert max(tasks.values()) - min(tasks.values()) <= 1, tasks
    if policy == "class_balanced":
        assert sorted(history[-1][1]) == list(range(6))
    if policy == "experience_balanced":
        assert sorted(history[-1][2].values()) == [3, 3, 4]


def test_class_balanced_replay_counts_task_and_class_pairs_in_task_incremental_streams(tiny_run):
    """Every task has a class 0 there; Avalanche's ClassBalancedBuffer would merge them into one group."""
    _, strategy = tiny_run(
        spied({"replay": {"mem_size": 12, "policy": "class_balanced"}}, after=("MemorySpy",)),
        scenario="task_incremental",
        tasks=3,
    )
    size, classes, tasks = spy(strategy, MemorySpy).history[-1]
    assert size == 12 and tasks == {0: 4, 1: 4, 2: 4} and classes == {0: 6, 1: 6}


def test_replayed_examples_reach_the_loss(tiny_run):
    result, strategy = tiny_run(spied({"replay": {"mem_size": 10, "replay_batch_size": 4}}))
    targets = spy(strategy, TargetSpy).targets
    assert all(y in (0, 1) for batch in targets[0] for y in batch)  # task 1: nothing to replay yet
    assert len(targets[1][0]) == 8 + 4  # task 2: a training batch plus a memory batch
    seen_in_task_2 = {y for batch in targets[1] for y in batch}
    assert seen_in_task_2 == {0, 1, 2, 3}


# -- DER ---------------------------------------------------------------------------------------
def test_reservoir_buffer_is_bounded_and_stores_what_it_is_given():
    buffer = ReservoirBuffer(mem_size=10)
    offered = {}
    for step in range(5):
        ids = torch.arange(7) + 7 * step  # (7,)
        logits = torch.randn(7, 4)  # (7, 4)
        offered.update({int(i): row for i, row in zip(ids, logits)})
        buffer.add(ids=ids, logits=logits)
        assert len(buffer) == min(7 * (step + 1), 10) and buffer.fields["ids"].shape[0] == 10
    assert buffer.seen == 35
    stored_ids = buffer.fields["ids"].tolist()
    assert len(set(stored_ids)) == 10
    for i, row in zip(stored_ids, buffer.fields["logits"]):
        assert torch.equal(row, offered[i])
    sample = buffer.sample(4)
    assert sample["ids"].shape == (4,) and set(sample["ids"].tolist()) <= set(stored_ids)


def test_reservoir_buffer_keeps_every_example_with_equal_probability():
    torch.manual_seed(0)
    kept = Counter()
    for _ in range(1000):
        buffer = ReservoirBuffer(mem_size=5)
        for start in range(0, 20, 4):
            buffer.add(ids=torch.arange(start, start + 4))
        kept.update(buffer.fields["ids"].tolist())
    frequencies = [kept[i] / 1000 for i in range(20)]
    assert all(abs(f - 5 / 20) < 0.06 for f in frequencies), frequencies


def test_masked_logit_mse_skips_units_masked_when_stored():
    stored = torch.tensor([[1.0, 2.0, MASKED_LOGIT], [0.0, -1.0, 3.0]])  # (2, 3)
    output = torch.tensor([[2.0, 2.0, 50.0], [0.0, 1.0, 3.0]])
    active = TextClassifier.distillation_mask(None, stored, None)  # the encoder's view: units active when stored
    assert masked_logit_mse(output, stored, active).item() == pytest.approx((1.0 + 0.0 + 0.0 + 4.0 + 0.0) / 5)


def packed_inputs(n: int, length: int, vocab: int) -> torch.Tensor:
    """Random packed token tensors. ``(n, 3, length)``"""
    ids = torch.randint(5, vocab, (n, length))
    mask = (torch.arange(length)[None] < torch.randint(3, length + 1, (n, 1))).long()
    return torch.stack([ids * mask, mask, torch.zeros_like(ids)], dim=1)


@pytest.fixture
def filled_der(tiny_bert):
    """A class-incremental tiny classifier that has seen units 0 and 1, and a DER memory of 6 examples
    stored then (units 2 and 3 masked), after which units 2 and 3 became active."""
    from transformers import AutoModel

    torch.manual_seed(0)
    encoder = AutoModel.from_pretrained(tiny_bert)
    model = TextClassifier(encoder, [4], "class_incremental").eval()  # eval: no dropout, forward is deterministic
    model.seen_units[:2] = True
    inputs = packed_inputs(6, 12, encoder.config.vocab_size)  # (6, 3, 12)
    with torch.no_grad():
        stored = model(inputs)  # (6, 4), units 2-3 at MASKED_LOGIT
        stored[:, :2] += torch.randn(6, 2)
    model.seen_units[:] = True

    def make(alpha: float, beta: float) -> DERPlugin:
        plugin = DERPlugin(mem_size=6, alpha=alpha, beta=beta, replay_batch_size=6)  # a replay batch = the whole memory
        targets, task_labels = torch.tensor([0, 1, 0, 1, 0, 1]), torch.zeros(6, dtype=torch.long)
        plugin.buffer.add(inputs=inputs, targets=targets, task_labels=task_labels, logits=stored)
        return plugin

    return model, inputs, stored, make


def der_loss(model, plugin: DERPlugin) -> float:
    strategy = SimpleNamespace(model=model, loss=torch.tensor(1.0), _criterion=nn.CrossEntropyLoss(), device="cpu")
    plugin.before_backward(strategy)
    return float(strategy.loss.detach())


def test_der_term_is_alpha_times_the_mse_on_active_units(filled_der):
    model, inputs, stored, make = filled_der
    assert (stored[:, 2:] == MASKED_LOGIT).all()
    with torch.no_grad():
        output = model(inputs)  # (6, 4), every unit active now
    by_hand = ((output[:, :2] - stored[:, :2]) ** 2).mean().item()
    assert der_loss(model, make(0.0, 0.0)) == pytest.approx(1.0)
    assert der_loss(model, make(0.5, 0.0)) - der_loss(model, make(0.0, 0.0)) == pytest.approx(0.5 * by_hand, rel=1e-5)


def test_der_plus_plus_adds_the_label_cross_entropy(filled_der):
    model, inputs, stored, make = filled_der
    with torch.no_grad():
        output = model(inputs)
    cross_entropy = nn.functional.cross_entropy(output, torch.tensor([0, 1, 0, 1, 0, 1])).item()
    mse = ((output[:, :2] - stored[:, :2]) ** 2).mean().item()
    assert der_loss(model, make(0.0, 0.7)) - 1.0 == pytest.approx(0.7 * cross_entropy, rel=1e-5)
    assert der_loss(model, make(0.5, 0.7)) - 1.0 == pytest.approx(0.5 * mse + 0.7 * cross_entropy, rel=1e-5)


def test_der_run_stores_logits_with_the_units_active_at_the_time(tiny_run):
    result, strategy = tiny_run(spied({"der": {"mem_size": 16}}, before=("LossBefore",), after=("LossAfter",)))
    assert result.status == "FINISHED", result.error
    buffer = plugin_with(strategy, "buffer").buffer
    targets, logits = buffer.fields["targets"], buffer.fields["logits"]  # (16,), (16, 4)
    assert len(buffer) == 16 and buffer.seen == 80
    old = targets < 2
    assert old.any() and (~old).any()
    assert (logits[old][:, 2:] == MASKED_LOGIT).all() and (logits[old][:, :2] > MASKED_LOGIT / 2).all()
    assert (logits[~old] > MASKED_LOGIT / 2).all()
    before, after = spy(strategy, LossBefore).losses[1], spy(strategy, LossAfter).losses[1]
    assert all(a > b for a, b in zip(after, before))  # the replay terms are added in task 2


# -- A-GEM and GEM -----------------------------------------------------------------------------
def test_agem_projection_removes_the_conflict_even_on_parameters_without_a_gradient():
    """A two-head model whose second head the current loss did not reach (its .grad is None)."""
    model = nn.ModuleList([nn.Linear(2, 1, bias=False), nn.Linear(2, 1, bias=False)])
    reference = torch.tensor([1.0, 0.0, 1.0, 1.0])  # the memory loss reaches both heads
    current = torch.tensor([-1.0, 2.0])  # the current loss reaches only head 0
    for plugin_cls in (AGEMPlugin, HarnessAGEMPlugin):
        model.zero_grad(set_to_none=True)
        model[0].weight.grad = current.view(1, 2).clone()
        plugin = plugin_cls(patterns_per_experience=1, sample_size=1)
        plugin.buffers, plugin.reference_gradients = [object()], reference
        plugin.after_backward(SimpleNamespace(model=model, device="cpu"))
        applied = flat_grad(model)  # (4,)
        if plugin_cls is AGEMPlugin:  # Avalanche drops the projection's head-1 part: the conflict stays
            assert torch.dot(applied, reference) < 0
        else:
            full = torch.cat([current, torch.zeros(2)])
            expected = full - torch.dot(full, reference) / torch.dot(reference, reference) * reference
            assert torch.allclose(applied, expected) and abs(torch.dot(applied, reference)) < 1e-6


def test_avalanche_agem_leaves_conflicts_in_task_incremental_runs(tiny_run):
    """The same run with Avalanche's AGEMPlugin: the old heads' share of the projection is dropped."""
    entry = {"avalanche.training.plugins:AGEMPlugin": {"patterns_per_experience": 20, "sample_size": 8}}
    _, strategy = tiny_run(spied(entry, after=("ProjectedGradSpy",)), scenario="task_incremental", tasks=3)
    assert min(spy(strategy, ProjectedGradSpy).cosines) < -1e-3


@pytest.mark.parametrize(
    "entry, scenario",
    [
        ({"agem": {"patterns_per_experience": 20, "sample_size": 8}}, "class_incremental"),
        ({"agem": {"patterns_per_experience": 20, "sample_size": 8}}, "task_incremental"),
        ({"gem": {"patterns_per_experience": 16, "memory_strength": 0.0}}, "class_incremental"),
        ({"gem": {"patterns_per_experience": 16, "memory_strength": 0.5}}, "task_incremental"),
    ],
)
def test_projected_gradient_does_not_raise_the_memory_loss(tiny_run, entry, scenario):
    spies = spied(entry, before=("RawGradSpy",), after=("ProjectedGradSpy",))
    result, strategy = tiny_run(spies, scenario=scenario, tasks=3)
    assert result.status == "FINISHED", result.error
    raw, projected = spy(strategy, RawGradSpy).cosines, spy(strategy, ProjectedGradSpy).cosines
    assert len(projected) >= 10 and min(raw) < 0  # conflicts occurred, so projections happened
    assert min(projected) >= -1e-3, min(projected)  # GEM's QP adds a 1e-3 ridge, hence the tolerance


def test_gem_keeps_a_memory_per_past_task(tiny_run):
    _, strategy = tiny_run({"gem": {"patterns_per_experience": 12}}, tasks=3)
    gem = plugin_with(strategy, "memory_x")
    assert sorted(gem.memory_x) == [0, 1, 2] and all(len(x) == 12 for x in gem.memory_x.values())
    assert {int(y) for y in gem.memory_y[1]} == {2, 3}


# -- GDumb -------------------------------------------------------------------------------------
def test_gdumb_trains_only_on_its_class_balanced_memory_from_reset_weights(tiny_run):
    result, strategy = tiny_run(spied({"gdumb": {"mem_size": 10}}, after=("TargetSpy", "MemorySpy")), tasks=3)
    assert result.status == "FINISHED", result.error
    gdumb, targets = plugin_with(strategy, "initial_weights"), spy(strategy, TargetSpy)
    for size, classes, _ in spy(strategy, MemorySpy).history:
        assert size <= 10 and max(classes.values()) - min(classes.values()) <= 1
    memory = gdumb.storage_policy.buffer
    memory_rows = rows(torch.stack([memory[i][0] for i in range(len(memory))]))
    trained_rows = rows(torch.cat(targets.inputs[2]))
    assert sorted(trained_rows) == sorted(memory_rows)  # one epoch: every memory example once, nothing else
    for task in (1, 2):  # each task starts again from the initial weights, in the same model object
        assert all(torch.equal(targets.first_weights[task][n], w) for n, w in gdumb.initial_weights.items())
        assert targets.model_ids[task] == targets.model_ids[0]


def test_avalanche_gdumb_swaps_the_model_object_the_harness_evaluates(tiny_run):
    """Why gdumb has its own plugin: Avalanche's replaces strategy.model by a copy at each task."""
    _, strategy = tiny_run(spied({"avalanche.training.plugins:GDumbPlugin": {"mem_size": 10}}))
    ids = spy(strategy, TargetSpy).model_ids
    assert ids[1] != ids[0]


# -- MIR and ER-ACE ----------------------------------------------------------------------------
def test_mir_replays_the_task_just_learnt(tiny_run):
    mir = {"mir": {"mem_size": 20, "subsample": 10, "replay_batch_size": 4}}
    _, ours = tiny_run(spied(mir, before=("LossBefore",), after=("LoaderSpy", "LossAfter")))
    assert spy(ours, LoaderSpy).has_loader == [False, True]
    before, after = spy(ours, LossBefore).losses[1], spy(ours, LossAfter).losses[1]
    assert all(a > b for a, b in zip(after, before))
    avalanche_mir = {"avalanche.training.plugins:MIRPlugin": {"mem_size": 20, "subsample": 10, "batch_size_mem": 4}}
    _, theirs = tiny_run(spied(avalanche_mir, after=("LoaderSpy",)))
    assert spy(theirs, LoaderSpy).has_loader == [False, False]  # the Avalanche bug: task 1 is never replayed


def test_er_ace_masks_new_data_to_the_current_task_and_replays_all_classes(tiny_run):
    _, strategy = tiny_run(spied({"er_ace": {"mem_size": 20}}, before=("LossBefore",), after=("OutputSpy", "LossAfter")))
    outputs = spy(strategy, OutputSpy).outputs
    assert all((o[:, 2:] == MASKED_LOGIT).all() for o in outputs[0])
    assert all((o[:, :2] == MASKED_LOGIT).all() and (o[:, 2:4] > MASKED_LOGIT / 2).all() for o in outputs[1])
    before, after = spy(strategy, LossBefore).losses[1], spy(strategy, LossAfter).losses[1]
    assert all(a > b for a, b in zip(after, before))
    stored = plugin_with(strategy, "buffer").buffer.fields["targets"]
    assert {0, 1} & set(stored.tolist()) and {2, 3} & set(stored.tolist())


def test_er_ace_is_class_incremental_only():
    with pytest.raises(ConfigError, match="does not support the task_incremental scenario"):
        REGISTRY.parse_strategies(["er_ace"], "task_incremental", Source())


# -- configuration -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, field_name",
    [("replay", "mem_size"), ("der", "mem_size"), ("gdumb", "mem_size"), ("mir", "mem_size"), ("er_ace", "mem_size"),
     ("agem", "patterns_per_experience"), ("gem", "patterns_per_experience"), ("agem", "sample_size")],
)
def test_an_empty_memory_is_refused_naming_the_field(name, field_name):
    with pytest.raises(ConfigError, match="must be >= 1") as info:
        REGISTRY.parse_strategies([{name: {field_name: 0}}], "class_incremental", Source("exp.yaml"))
    assert info.value.key == f"strategies[0].{name}.{field_name}"


def test_unknown_replay_policy_gets_a_suggestion():
    with pytest.raises(ConfigError, match="must be one of reservoir, class_balanced, experience_balanced") as info:
        REGISTRY.parse_strategies([{"replay": {"policy": "class_balance"}}], "class_incremental", Source())
    assert "class_balanced" in (info.value.hint or "")


def test_mir_refuses_fewer_candidates_than_it_replays_and_caps_its_default_at_them():
    # subsample 1 with replay_batch_size 8 validated, ran with 8 candidates and logged 1.
    from cl_harness.config.yaml_io import Source
    from cl_harness.errors import ConfigError
    from cl_harness.strategies import default_registry
    from cl_harness.strategies.mir import MIRConfig, build

    registry = default_registry(installed=False)
    with pytest.raises(ConfigError, match=r"must be at least replay_batch_size \(8\), got 1") as info:
        registry.parse_strategies([{"mir": {"subsample": 1, "replay_batch_size": 8}}], "class_incremental", Source("e.yaml", {}))
    assert info.value.key.endswith("mir.subsample"), info.value
    context = type("Context", (), {"batch_size": 8, "scenario": "class_incremental"})()
    (plugin,) = build(MIRConfig(subsample=3), context)
    assert (plugin.subsample, plugin.batch_size_mem) == (3, 3)  # the default replays at most the candidates it scored
