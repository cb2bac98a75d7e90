"""Parameter-efficient backbones (LoRA, BitFit, prompt tuning) and the LoRA strategies (seq_lora, inc_lora, o_lora)."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import write_demo_stream, write_experiment

from cl_harness.config.loader import load_experiment
from cl_harness.errors import ConfigError
from cl_harness.models.lora import LoRALinear, lora_layers, orthogonality_loss
from cl_harness.grid.prepare import check_experiment, prepare_experiment
from cl_harness.runner.run import TrainingRun, build_model, build_plugins, build_strategy
from cl_harness.strategies.o_lora import o_lora_penalty


def prepared_experiment(tmp_path, tiny_bert, strategy, peft: dict | None = None, scenario="class_incremental", tasks=2):
    write_demo_stream(tmp_path, scenario, per_class=16, tasks=tasks)
    path = write_experiment(tmp_path, tiny_bert, [strategy])
    if peft is not None:
        config = yaml.safe_load(path.read_text())
        config["backbone"]["peft"] = peft
        path.write_text(yaml.safe_dump(config, sort_keys=False))
    return prepare_experiment(check_experiment(load_experiment(path)))


def pretrained_weights(tiny_bert) -> dict[str, torch.Tensor]:
    from transformers import BertModel

    return {k: v.clone() for k, v in BertModel.from_pretrained(tiny_bert).state_dict().items()}


def base_weights(encoder) -> dict[str, torch.Tensor]:
    """The encoder's original weights by their plain BERT names, whatever wrapper holds them."""
    out = {}
    for name, tensor in encoder.state_dict().items():
        if "lora_" in name or "prompt_encoder" in name:
            continue
        plain = name.removeprefix("base_model.model.").replace(".base_layer.", ".").replace(".base.", ".")
        out[plain] = tensor
    return out


def stepwise(prepared, spec_index: int = 0):
    """(model, strategy, experiences) to train task by task, as train_and_evaluate does."""
    from cl_harness.data.benchmark import make_benchmark

    spec = prepared.checked.strategies[spec_index]
    plan = prepared.run_plan(next(p for p in prepared.runs if p.strategy is spec))
    model = build_model(plan, torch.device("cpu"))
    plugins = build_plugins(plan, model, torch.device("cpu"))
    strategy = build_strategy(plan, model, torch.device("cpu"), plugins, [], False)
    return model, strategy, list(make_benchmark(prepared.encoded).train_stream), plugins


def test_peft_config_is_validated(tmp_path, tiny_bert):
    with pytest.raises(ConfigError, match="bottleneck"):
        prepared_experiment(tmp_path, tiny_bert, "naive", {"method": "adapter"})
    with pytest.raises(ConfigError, match="lora_rnk"):
        prepared_experiment(tmp_path, tiny_bert, "naive", {"method": "lora", "lora_rnk": 4})
    with pytest.raises(ConfigError, match="needs backbone.peft.method: none"):
        prepared_experiment(tmp_path, tiny_bert, "seq_lora", {"method": "lora"})
    with pytest.raises(ConfigError, match="combine at most one"):
        prepared_experiment(tmp_path, tiny_bert, {"name": "both", "plugins": ["seq_lora", "inc_lora"]})


def test_backbone_lora_leaves_the_frozen_backbone_bit_identical(tmp_path, tiny_bert):
    prepared = prepared_experiment(tmp_path, tiny_bert, "naive", {"method": "lora", "lora_rank": 2, "target_modules": ["query", "value"]})
    run = TrainingRun(prepared.run_plan(prepared.runs[0]), show_progress=False)
    result, strategy = run.execute(), run.strategy
    model = strategy.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("heads.") for n in trainable)
    before = pretrained_weights(tiny_bert)
    after = base_weights(model.encoder)
    assert set(after) == set(before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert any(p.abs().sum() > 0 for p in lora_b)  # the adapters did train (B starts at zero)
    full = sum(p.numel() for p in model.parameters())
    assert result.metrics["trainable_params"] == model.trainable_parameters() < full / 5
    assert result.status == "FINISHED"


def test_bitfit_trains_only_biases_and_heads(tmp_path, tiny_bert):
    prepared = prepared_experiment(tmp_path, tiny_bert, "naive", {"method": "bitfit"})
    run = TrainingRun(prepared.run_plan(prepared.runs[0]), show_progress=False)
    _, strategy = run.execute(), run.strategy
    model = strategy.model
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {n for n, _ in model.named_parameters() if n.startswith("heads.") or (n.startswith("encoder.") and n.endswith("bias"))}
    before = pretrained_weights(tiny_bert)
    after = model.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if not k.endswith("bias"))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.endswith("bias"))


def test_prompt_tuning_trains_only_the_soft_prompt_and_heads(tmp_path, tiny_bert):
    prepared = prepared_experiment(tmp_path, tiny_bert, "naive", {"method": "prompt_tuning", "num_virtual_tokens": 4})
    run = TrainingRun(prepared.run_plan(prepared.runs[0]), show_progress=False)
    result, strategy = run.execute(), run.strategy
    trainable = {n for n, p in strategy.model.named_parameters() if p.requires_grad}
    assert trainable == {n for n in trainable if "prompt_encoder" in n or n.startswith("heads.")}
    assert any("prompt_encoder" in n for n in trainable)
    assert result.status == "FINISHED" and len(result.matrix) == 2


def test_seq_lora_keeps_the_backbone_and_trains_one_adapter(tmp_path, tiny_bert):
    prepared = prepared_experiment(tmp_path, tiny_bert, {"seq_lora": {"lora_rank": 2}})
    run = TrainingRun(prepared.run_plan(prepared.runs[0]), show_progress=False)
    result, strategy = run.execute(), run.strategy
    layers = lora_layers(strategy.model)
    assert len(layers) == 4 and all(len(layer.lora_a) == 1 for layer in layers)  # 2 layers x (query, value)
    before = pretrained_weights(tiny_bert)
    after = base_weights(strategy.model.encoder)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(layer.lora_b[0].abs().sum() > 0 for layer in layers)
    assert result.status == "FINISHED"


def test_inc_lora_keeps_earlier_task_modules_bit_identical(tmp_path, tiny_bert):
    prepared = prepared_experiment(tmp_path, tiny_bert, {"inc_lora": {"lora_rank": 2}}, tasks=3)
    model, strategy, experiences, _ = stepwise(prepared)
    layers = lora_layers(model)
    assert all(len(layer.lora_a) == 3 for layer in layers)
    snapshots = []
    for index, experience in enumerate(experiences):
        strategy.train(experience, num_workers=0)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert all(n.startswith("heads.") or n.endswith(f"lora_a.{index}") or n.endswith(f"lora_b.{index}") for n in trainable)
        for earlier, snapshot in enumerate(snapshots):
            for layer, (a, b) in zip(layers, snapshot):
                assert torch.equal(layer.lora_a[earlier], a) and torch.equal(layer.lora_b[earlier], b)
        assert all(layer.lora_b[index].abs().sum() > 0 for layer in layers)  # this task's adapter trained
        snapshots.append([(layer.lora_a[index].detach().clone(), layer.lora_b[index].detach().clone()) for layer in layers])


def test_inc_lora_task_label_selects_the_adapter(tmp_path, tiny_bert):
    prepared = prepared_experiment(tmp_path, tiny_bert, "inc_lora", scenario="task_incremental")
    model, strategy, experiences, _ = stepwise(prepared)
    assert model.route_by_task
    strategy.train(experiences[0], num_workers=0)
    model.eval()
    x = prepared.encoded[0].test_inputs[:8]  # (8, 3, length)
    with torch.no_grad():
        task0 = model(x, 0)
        for layer in lora_layers(model):
            layer.lora_b[1].add_(1.0)  # disturb the second task's adapter only
        assert torch.equal(model(x, 0), task0)  # task 0 never passes through adapter 1
        mixed = model(x, torch.tensor([0, 1] * 4))
    assert torch.allclose(mixed[0::2], task0[0::2], atol=1e-5)  # rows of task 0 as alone (up to batching round-off)
    with torch.no_grad():
        task1 = model(x, 1)
    assert torch.allclose(mixed[1::2], task1[1::2], atol=1e-5)
    assert not torch.allclose(model.encode(x), features_without_adapters(model, x), atol=1e-3)  # the summed (untrained routed) path differs


def features_without_adapters(model, x):
    with torch.no_grad():
        saved = [[b.clone() for b in layer.lora_b] for layer in lora_layers(model)]
        for layer in lora_layers(model):
            for b in layer.lora_b:
                b.zero_()
        features = model.encode(x)
        for layer, bs in zip(lora_layers(model), saved):
            for b, old in zip(layer.lora_b, bs):
                b.copy_(old)
    return features


def test_o_lora_loss_is_zero_for_orthogonal_subspaces_and_positive_otherwise():
    basis = torch.eye(8)
    old, new = basis[:2], basis[2:4]  # (rank 2, in 8) each: disjoint coordinate subspaces
    assert orthogonality_loss([old], new).item() == 0.0
    assert orthogonality_loss([], new).item() == 0.0
    overlapping = new + 0.1 * old
    expected = (old @ overlapping.T).abs().sum()  # = 4 entries of 0.1 * 1 ... = 0.2
    assert orthogonality_loss([old], overlapping).item() == pytest.approx(float(expected)) and expected > 0
    assert orthogonality_loss([old, old], overlapping).item() == pytest.approx(2 * float(expected))


def test_o_lora_penalty_sums_layers_and_adds_l2():
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(6, 5), num_adapters=2, rank=2, alpha=2.0, dropout=0.0)
    model = torch.nn.Sequential(layer)
    with torch.no_grad():
        layer.lora_a[0].copy_(torch.eye(6)[:2])
        layer.lora_a[1].copy_(torch.eye(6)[2:4])
    assert o_lora_penalty(model, 1, orthogonal_lambda=0.5, l2_lambda=0.0).item() == 0.0
    assert o_lora_penalty(model, 0, orthogonal_lambda=0.5, l2_lambda=0.0).item() == 0.0  # nothing earlier
    assert o_lora_penalty(model, 1, orthogonal_lambda=0.0, l2_lambda=0.1).item() == pytest.approx(0.1 * 2.0)  # ||A_1||^2 = 2, B = 0
    with torch.no_grad():
        layer.lora_a[1].copy_(torch.eye(6)[1:3])  # shares a direction with adapter 0
    assert o_lora_penalty(model, 1, orthogonal_lambda=0.5, l2_lambda=0.0).item() == pytest.approx(0.5)


def test_o_lora_with_replay_runs_and_drives_the_subspaces_apart(tmp_path, tiny_bert):
    entry = {"name": "o_lora+replay", "plugins": [{"o_lora": {"lora_rank": 2, "orthogonal_lambda": 1.0}}, {"replay": {"mem_size": 16}}]}
    prepared = prepared_experiment(tmp_path, tiny_bert, entry)
    model, strategy, experiences, _ = stepwise(prepared)
    strategy.train(experiences[0], num_workers=0)
    start = o_lora_penalty(model, 1, 1.0, 0.0).item()
    strategy.train(experiences[1], num_workers=0)
    assert start > 0 and o_lora_penalty(model, 1, 1.0, 0.0).item() < start


def test_inc_lora_model_and_plugins_survive_a_checkpoint(tmp_path, tiny_bert):
    from cl_harness.runner.checkpoint import load_checkpoint, save_checkpoint

    prepared = prepared_experiment(tmp_path, tiny_bert, {"name": "inc_lora+ewc", "plugins": ["inc_lora", "ewc"]})
    model, strategy, experiences, plugins = stepwise(prepared)
    strategy.train(experiences[0], num_workers=0)
    save_checkpoint(tmp_path / "run", 1, model, strategy.optimizer, plugins, strategy.clock)
    checkpoint = load_checkpoint(tmp_path / "run")
    fresh = build_model(prepared.run_plan(prepared.runs[0]), torch.device("cpu"))
    fresh.load_state_dict(checkpoint["model"])  # same structure: the adapters exist before loading
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    assert [type(p).__name__ for p in checkpoint["plugins"]] == ["TaskAdapters", "EWC"]


def test_validate_names_the_peft_method(tmp_path, tiny_bert, capsys):
    from cl_harness.cli import main

    write_demo_stream(tmp_path, per_class=8)
    path = write_experiment(tmp_path, tiny_bert, ["naive"])
    config = yaml.safe_load(path.read_text())
    config["backbone"]["peft"] = {"method": "bitfit"}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["validate", str(path)]) == 0
    assert "(encoder, peft: bitfit)" in capsys.readouterr().out
    config["backbone"]["peft"] = {"method": "adaptr"}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "backbone.peft.method" in err and "adapter" in err  # did-you-mean names the allowed value


def test_lora_targets_must_name_linear_layers_of_the_backbone(tmp_path, tiny_bert):
    with pytest.raises(ConfigError, match=r"\['qkv'\] name no linear layer.*query"):
        prepared_experiment(tmp_path, tiny_bert, {"o_lora": {"target_modules": ["query", "qkv"]}})
    with pytest.raises(ConfigError, match="name no linear layer"):
        prepared_experiment(tmp_path, tiny_bert, "naive", {"method": "lora", "target_modules": ["attention"]})
