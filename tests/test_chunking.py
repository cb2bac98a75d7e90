"""The partition of a sorted training batch into encoder calls."""

import itertools

from cl_harness.models.chunking import padding_optimal_chunks


def cost(sorted_lengths, sizes, overhead):
    total, start = 0, 0
    for size in sizes:
        total += overhead + size * sorted_lengths[start]
        start += size
    return total


def all_partitions(count):
    for cuts in itertools.product([False, True], repeat=count - 1):
        sizes, run = [], 1
        for cut in cuts:
            if cut:
                sizes.append(run)
                run = 1
            else:
                run += 1
        yield sizes + [run]


def test_equal_lengths_stay_one_call():
    assert padding_optimal_chunks([40] * 16) == [16]


def test_long_rows_split_from_short_ones_only_when_the_padding_saved_beats_a_call():
    assert padding_optimal_chunks([120, 118, 10, 9, 8], overhead_tokens=144) == [2, 3]
    assert padding_optimal_chunks([60, 55, 50, 45, 40], overhead_tokens=144) == [5], "saving 50 tokens is not worth a call"
    assert padding_optimal_chunks([60, 55, 50, 45, 40], overhead_tokens=0) == [1, 1, 1, 1, 1], "free calls: no padding at all"


def test_the_partition_is_the_cheapest_of_all():
    sorted_lengths = [128, 97, 90, 71, 64, 60, 51, 44, 40, 22, 21, 9]
    for overhead in (0, 30, 144, 400, 10_000):
        sizes = padding_optimal_chunks(sorted_lengths, overhead)
        assert sum(sizes) == len(sorted_lengths)
        cheapest = min(cost(sorted_lengths, p, overhead) for p in all_partitions(len(sorted_lengths)))
        assert cost(sorted_lengths, sizes, overhead) == cheapest


def test_an_empty_batch_has_no_runs():
    assert padding_optimal_chunks([]) == []
