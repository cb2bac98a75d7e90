"""``training.eval_per_class``: a deterministic cap on test examples per class."""

from __future__ import annotations

from collections import Counter

from cl_harness.data.tasks import TaskData
from cl_harness.grid.prepare import cap_test_per_class


def test_cap_keeps_at_most_n_per_class_in_file_order_and_leaves_train_alone():
    task = TaskData("t", ["a", "b", "c"], ["x"], [0], [f"s{i}" for i in range(30)], [i % 3 if i < 24 else 0 for i in range(30)])
    capped = cap_test_per_class(task, 4)
    assert Counter(capped.test_labels) == {0: 4, 1: 4, 2: 4}
    assert capped.test_texts == sorted(capped.test_texts, key=lambda s: int(s[1:]))  # order kept
    assert all(task.test_labels[int(s[1:])] == label for s, label in zip(capped.test_texts, capped.test_labels))
    assert cap_test_per_class(task, 4) == capped  # deterministic
    assert (capped.train_texts, capped.train_labels) == (["x"], [0])
    assert cap_test_per_class(task, None) is task
