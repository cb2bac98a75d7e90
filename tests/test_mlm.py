"""Masked-LM tasks: BERT masking, training on the shared backbone, and streams mixing mlm and classification tasks."""

from __future__ import annotations

import math

import pytest
import torch
import yaml
from conftest import write_experiment

from cl_harness.config.loader import load_experiment
from cl_harness.data.demo import DEMO_LABELS, generate_demo_rows
from cl_harness.errors import ConfigError
from cl_harness.models.masked_lm import IGNORE, MaskingSpec, mask_tokens, masked_lm_loss
from cl_harness.grid.prepare import check_experiment, prepare_experiment
from cl_harness.runner.run import TrainingRun, build_model


def write_mixed_stream(directory, mlm_task: dict | None = None) -> None:
    """An mlm task on plain-text lines (a .txt file) between two classification tasks of demo topics."""
    lines = [row["text"] for row in generate_demo_rows(DEMO_LABELS[4:6], 20, 7, "train")]
    (directory / "domain.txt").write_text("\n".join(lines) + "\n")
    demo = {"type": "demo", "train_examples_per_class": 12, "test_examples_per_class": 8}
    mlm = mlm_task or {
        "name": "domain_mlm",
        "type": "mlm",
        "source": {"type": "files", "train_file": "domain.txt"},
        "text_field": "text",
        "test_fraction": 0.25,
        "train_examples": 24,
    }
    stream = {
        "name": "mixed",
        "scenario": "class_incremental",
        "tasks": [
            {"name": "t1", "source": {**demo, "seed": 0}, "classes": DEMO_LABELS[0:2]},
            mlm,
            {"name": "t2", "source": {**demo, "seed": 1}, "classes": DEMO_LABELS[2:4]},
        ],
    }
    (directory / "stream.yaml").write_text(yaml.safe_dump(stream, sort_keys=False))


def prepared(tmp_path, tiny_bert, strategy="naive", mlm_task=None, **training):
    write_mixed_stream(tmp_path, mlm_task)
    path = write_experiment(tmp_path, tiny_bert, [strategy], **training)
    return prepare_experiment(check_experiment(load_experiment(path)))


def test_bert_masking_chooses_15_percent_of_real_tokens_80_10_10():
    spec = MaskingSpec(mask_id=4, special_ids=(0, 2, 3), vocab_size=50)
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (400, 100))  # (batch, length)
    ids[:, 0], ids[:, 60] = 2, 3  # [CLS] ... [SEP]
    attention = torch.ones_like(ids)
    attention[:, 61:] = 0
    ids[:, 61:] = 0  # padding
    masked, labels = mask_tokens(ids, attention, spec, generator)
    chosen = labels != IGNORE
    assert not chosen[:, 0].any() and not chosen[:, 60:].any()  # specials and padding never chosen
    assert torch.equal(labels[chosen], ids[chosen])
    assert chosen.sum() / (400 * 59) == pytest.approx(0.15, abs=0.01)
    as_mask = (masked[chosen] == 4).float().mean()
    kept = (masked[chosen] == ids[chosen]).float().mean()
    assert as_mask == pytest.approx(0.8, abs=0.02) and kept == pytest.approx(0.1 + 0.1 / 45, abs=0.02)
    assert torch.equal(masked[~chosen], ids[~chosen])


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_mlm_task_lowers_masked_token_loss_on_its_own_text(tmp_path, tiny_bert, precision):
    from cl_harness.tasks.mlm import train_masked_lm
    from cl_harness.runner.loss_scaling import DynamicLossScale

    setup = prepared(tmp_path, tiny_bert, precision=precision)
    (task,) = [t for t in setup.encoded if t.kind == "mlm"]
    torch.manual_seed(0)
    model = build_model(setup.run_plan(setup.runs[0]), torch.device("cpu"))
    spec = setup.resources["mlm"]

    def loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(masked_lm_loss(model, task.train_inputs, spec, torch.Generator().manual_seed(1)))

    before = loss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    loss_scale = DynamicLossScale() if precision == "fp16" else None
    train_masked_lm(model, optimizer, task.train_inputs, spec, epochs=8, batch_size=8, device=torch.device("cpu"), loss_scale=loss_scale)
    after = loss()
    assert after < 0.8 * before
    if loss_scale is not None:
        assert loss_scale.finite_steps > 0, "the steps went through the loss scale"


def test_stream_mixing_mlm_and_classification_runs_end_to_end(tmp_path, tiny_bert):
    setup = prepared(tmp_path, tiny_bert, {"name": "replay+ewc", "plugins": [{"replay": {"mem_size": 16}}, "ewc"]}, epochs=2)
    run = TrainingRun(setup.run_plan(setup.runs[0]), show_progress=False)
    result, strategy = run.execute(), run.strategy
    assert result.status == "FINISHED", result.error
    assert result.tasks == ["t1", "domain_mlm", "t2"]
    assert result.column_metrics == ["accuracy", "masked_token_accuracy", "accuracy"]
    assert len(result.matrix) == 3 and all(len(row) == 3 for row in result.matrix)
    assert all(0.0 <= v <= 1.0 for row in result.matrix for v in row)
    assert result.matrix[1][1] > result.initial[1]  # the mlm task learned its own text
    assert math.isfinite(result.metrics["forgetting"]) and result.metrics["trainable_params"] > 0
    assert strategy.clock.train_exp_counter == 2  # the two classification tasks went through the Avalanche loop


def test_mlm_task_config_is_checked(tmp_path, tiny_bert):
    bad = {"name": "m", "type": "mlm", "source": {"type": "files", "train_file": "domain.txt"}, "classes": ["a", "b"]}
    with pytest.raises(ConfigError, match="does not apply to an mlm task"):
        prepared(tmp_path, tiny_bert, mlm_task=bad)
    with pytest.raises(ConfigError, match="cannot train a stream with mlm tasks"):
        prepared(tmp_path, tiny_bert, strategy="inc_lora")
    with pytest.raises(ConfigError, match="cannot train a stream with mlm tasks"):
        prepared(tmp_path, tiny_bert, strategy="joint")


def test_validate_lists_the_mlm_task_and_rejects_inc_lora_with_exit_code_2(tmp_path, tiny_bert, capsys):
    from cl_harness.cli import main

    write_mixed_stream(tmp_path)
    path = write_experiment(tmp_path, tiny_bert, ["naive"])
    assert main(["validate", str(path)]) == 0
    out = capsys.readouterr().out
    assert "domain_mlm  mlm" in out and "t2" in out
    path = write_experiment(tmp_path, tiny_bert, ["o_lora"])
    assert main(["validate", str(path)]) == 2
    assert "strategies[0]" in capsys.readouterr().err
