"""Length bucketing of training batches: every example once, similar lengths per batch, replay untouched."""

from __future__ import annotations

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
