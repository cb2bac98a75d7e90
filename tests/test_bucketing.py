"""Length bucketing of training batches: every example once, similar lengths per batch, replay untouched."""

from __future__ import annotations

import pytest
import torch

from cl_harness.runner.hooks import length_bucketed_batches


def test_every_example_appears_once_and_batches_hold_similar_lengths():
    torch.manual_seed(0)
    lengths = torch.randint(5, 120, (1000,))
    batches = length_bucketed_batches(lengths, batch_size=16, chunk_batches=50)
    flat = sorted(i for batch in batches for i in batch)
    assert flat == list(range(1000))
    assert all(len(b) <= 16 for b in batches)

    def mean_spread(groups):
        return sum(float(lengths[g].max() - lengths[g].min()) for g in groups) / len(groups)

    random_batches = torch.randperm(1000).split(16)
    assert mean_spread(batches) < 0.2 * mean_spread([b.tolist() for b in random_batches])


def test_batch_order_is_random_but_seeded():
    lengths = torch.arange(200)
    torch.manual_seed(1)
    first = length_bucketed_batches(lengths, 8, chunk_batches=5)
    torch.manual_seed(1)
    assert length_bucketed_batches(lengths, 8, chunk_batches=5) == first
    torch.manual_seed(2)
    assert length_bucketed_batches(lengths, 8, chunk_batches=5) != first


def spy_of(strategy):
    (spy,) = [p for p in strategy.plugins if type(p).__name__ == "LoaderSpy"]
    return spy


def test_naive_trains_on_bucketed_batches_and_replay_keeps_its_mixed_loader(tiny_run):
    spy = {"cl_test_plugins:LoaderSpy": {}}
    _, strategy = tiny_run({"name": "naive", "plugins": ["naive", spy]}, length_bucketing=True, per_class=40)
    bucketed = spy_of(strategy)
    assert set(bucketed.loader_types) == {"DataLoader"}
    _, strategy = tiny_run({"name": "naive", "plugins": ["naive", spy]}, length_bucketing=False, per_class=40)
    plain = spy_of(strategy)
    assert set(plain.loader_types) == {"TaskBalancedDataLoader"}

    def padding(spy):  # padded positions per batch after trimming to the longest text
        return sum(len(b) * max(b) - sum(b) for b in spy.batch_lengths)

    assert padding(bucketed) < 0.5 * padding(plain)

    _, strategy = tiny_run({"name": "replay", "plugins": [{"replay": {"mem_size": 10}}, spy]}, length_bucketing=True, per_class=40)
    # task 1 has no memory yet, so it is bucketed; task 2 keeps replay's mixed batches
    assert spy_of(strategy).loader_types == ["DataLoader", "ReplayDataLoader"]


def test_evaluation_batches_bound_their_padding_and_cover_every_example():
    from cl_harness.evaluation.evaluator import length_sorted_batches

    torch.manual_seed(0)
    sizes = torch.randint(3, 60, (500,))
    inputs = torch.zeros((500, 3, 64), dtype=torch.long)
    for row, n in enumerate(sizes.tolist()):
        inputs[row, 1, :n] = 1
    batches = length_sorted_batches(inputs, batch_size=32)
    assert sorted(torch.cat(batches).tolist()) == list(range(500))
    assert all(len(b) <= 32 for b in batches)
    for batch in batches:
        longest, shortest = int(sizes[batch].max()), int(sizes[batch].min())
        assert shortest >= 0.9 * longest, (longest, shortest)
    padded = sum(len(b) * int(sizes[b].max()) for b in batches)
    assert padded <= 1.12 * int(sizes.sum()), "at most about 10% of the computed tokens are padding"
    assert len(batches) < 100, "batches still hold many rows"


def test_the_loss_guard_names_the_first_non_finite_step_of_a_deferred_check():
    from types import SimpleNamespace

    from cl_harness.errors import TrainingError
    from cl_harness.runner.hooks import FiniteLossGuard

    guard = FiniteLossGuard("naive", ["t1", "t2"], check_every=25)
    strategy = SimpleNamespace(experience=SimpleNamespace(current_experience=1), clock=SimpleNamespace(train_exp_epochs=0))
    guard.steps = 7
    guard.pending = [torch.tensor(v) for v in (0.5, 0.4, 0.3, float("inf"), float("nan"))]  # steps 3..7
    with pytest.raises(TrainingError, match=r"non-finite loss \(inf\).*task 't2', step 6 of epoch 1"):
        guard.check(strategy)
    assert guard.pending == []
    guard.pending = [torch.tensor(0.1)]
    guard.check(strategy)  # finite: nothing raised
