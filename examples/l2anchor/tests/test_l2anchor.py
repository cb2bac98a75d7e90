"""The checks cl-harness runs on its own strategies, run on this one."""

from cl_harness.testing import check_strategy

from l2anchor import L2_ANCHOR


def test_l2anchor_passes_the_cl_harness_strategy_checks(tmp_path):
    check = check_strategy(L2_ANCHOR, folder=tmp_path)
    assert check.matrix != check.naive_matrix
