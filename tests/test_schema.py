"""The store layout's names and formats: every format written by tracking/schema.py parses back through it."""

from __future__ import annotations

import pytest

from cl_harness.tracking import schema


def test_run_names_round_trip():
    name = schema.run_name("replay+ewc", 3, 1)
    assert name == "replay+ewc/seed3/order1"
    assert schema.parse_run_name(name) == schema.RunName("replay+ewc", 3, 1)
    assert str(schema.parse_run_name(name)) == name
    assert schema.parse_run_name("legacy-run") == schema.RunName("legacy-run", None, None)


def test_task_metrics_round_trip_and_are_valid_mlflow_keys():
    assert schema.task_acc_metric("sst2") == "acc/sst2"
    assert schema.parse_task_metric(schema.task_acc_metric("sst2")) == ("acc", "sst2")
    assert schema.parse_task_metric(schema.pppl_metric("wiki")) == ("pppl", "wiki")
    assert schema.parse_task_metric(schema.em_metric("agnews")) == ("em", "agnews")
    assert schema.parse_task_metric(schema.SEEN_AVG_METRIC) is None
    assert schema.parse_task_metric("acc") is None
    assert schema.task_acc_metric("a:b?").startswith("acc/a_b_-")  # refused characters: _ plus a short hash of the name
    with pytest.raises(ValueError):
        schema.metric_key("//")


def test_tags_round_trip():
    assert schema.parse_task_order_tag(schema.task_order_tag(["t2", "t1"])) == ["t2", "t1"]
    assert schema.int_tag({schema.SEED_TAG: "4"}, schema.SEED_TAG) == 4
    assert schema.int_tag({schema.SEED_TAG: "x"}, schema.SEED_TAG) is None
    assert schema.version_tag("torch") == "versions.torch"


def test_artifact_payloads_round_trip():
    payload = schema.accuracy_matrix_dict(["a", "b"], [0.1, 0.2], [[0.9, 0.3]], ["accuracy", "masked_token_accuracy"])
    assert schema.parse_matrix(payload) == (["a", "b"], [0.1, 0.2], [[0.9, 0.3]])
    with pytest.raises(ValueError):
        schema.parse_matrix({**payload, "matrix": [[0.9]]})
    assert schema.parse_planned_runs(schema.planned_runs_dict(["naive/seed0/order0"])) == ["naive/seed0/order0"]


def test_kinds_extra_prefixes_are_the_schema_names():
    from cl_harness.tasks import instruction, mlm

    assert (mlm.PPPL_PREFIX, instruction.EM_PREFIX) == (schema.PPPL_PREFIX, schema.EM_PREFIX)
