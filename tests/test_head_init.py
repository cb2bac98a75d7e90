"""``backbone.head_init: label_names``: encoder heads from the label names give a real zero-shot initial row."""

from __future__ import annotations

import pytest
import yaml
from conftest import write_demo_stream, write_experiment


def run(tmp_path, backbone, strategy, head_init: str, tasks: int = 3):
    from cl_harness.config.loader import load_experiment
    from cl_harness.grid.prepare import check_experiment, prepare_experiment
    from cl_harness.runner.run import train_and_evaluate

    write_demo_stream(tmp_path, "class_incremental", per_class=10, tasks=tasks)
    path = write_experiment(tmp_path, backbone, [strategy], device="cpu", max_length=48)
    data = yaml.safe_load(path.read_text())
    data["backbone"]["head_init"] = head_init
    path.write_text(yaml.safe_dump(data))
    prepared = prepare_experiment(check_experiment(load_experiment(path)), cache=None)
    return train_and_evaluate(prepared.run_plan(prepared.runs[0]), show_progress=False)


@pytest.mark.slow
def test_label_name_heads_give_minilm_a_real_zero_shot_row(tmp_path):
    from cl_harness.config.experiment import BUNDLED_MINILM

    labelled = run(tmp_path, BUNDLED_MINILM, "zero_shot", "label_names")
    random = run(tmp_path, BUNDLED_MINILM, "zero_shot", "random")
    # 6 classes over the stream, all active: chance is 1/6 a task's examples
    assert min(labelled.initial) > 0.6, labelled.initial
    assert random.initial == [0.0, 0.0, 0.0]  # untrained class-incremental units are masked: no class can win
    assert labelled.matrix == [labelled.initial] and labelled.metrics["acc"] == pytest.approx(sum(labelled.initial) / 3)


def test_label_name_heads_hold_the_normalised_name_embeddings(tmp_path, tiny_bert):
    import torch

    from cl_harness.config.loader import load_experiment
    from cl_harness.data.encoding import encode_texts
    from cl_harness.grid.prepare import check_experiment, prepare_experiment
    from cl_harness.runner.run import build_model

    write_demo_stream(tmp_path, "class_incremental", per_class=4, tasks=2)
    path = write_experiment(tmp_path, tiny_bert, ["naive"], device="cpu")
    data = yaml.safe_load(path.read_text())
    data["backbone"]["head_init"] = "label_names"
    path.write_text(yaml.safe_dump(data))
    prepared = prepare_experiment(check_experiment(load_experiment(path)), cache=None)
    model = build_model(prepared.run_plan(prepared.runs[0]), torch.device("cpu")).eval()
    names = prepared.checked.space.shared
    with torch.no_grad():
        features = model.encode(encode_texts(prepared.checked.tokenizer, names, 24), chunked=False)
    expected = torch.nn.functional.normalize(features, dim=-1)
    assert torch.allclose(model.heads[0].weight, expected, atol=1e-5) and bool(model.seen_units.all())
    assert float(model.heads[0].bias.detach().abs().sum()) == 0.0
