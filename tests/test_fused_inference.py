"""The scoring fast path (models/fused_inference.py): the same logits as eager PyTorch, the model given back unchanged,
and no swap where it does not apply."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cl_harness.config.experiment import BackboneConfig
from cl_harness.models.backbone import load_encoder
from cl_harness.models.classifier import TextClassifier
from cl_harness.models.fused_inference import FusedLinear, can_fuse, fused_linears

pytestmark = pytest.mark.skipif(not can_fuse(nn.Linear(2, 2)), reason="this torch build has no oneDNN fused linear operator")


def packed(lengths: list[int], width: int = 12) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    x = torch.zeros((len(lengths), 3, width), dtype=torch.long)
    for row, n in enumerate(lengths):
        x[row, 0, :n] = torch.randint(5, 20, (n,), generator=generator)
        x[row, 1, :n] = 1
    return x  # (batch, 3, width)


@pytest.fixture
def model(tiny_bert):
    return TextClassifier(load_encoder(BackboneConfig(name=str(tiny_bert))), [4], "domain_incremental").eval()


def linear_layers(module: nn.Module) -> dict[str, nn.Module]:
    """The model's linear layers as its modules hold them (a FusedLinear's wrapped layer is not one of them)."""
    layers = {}
    for name, parent in module.named_modules():
        if not isinstance(parent, FusedLinear):
            layers |= {f"{name}.{child_name}": child for child_name, child in parent.named_children() if isinstance(child, (nn.Linear, FusedLinear))}
    return layers


def test_scoring_gives_the_eager_logits_with_every_encoder_linear_fused(model):
    x = packed([12, 9, 5, 3])
    with torch.inference_mode():
        reference = model(x)  # (4, 4)
        with model.scoring():
            fused = {name: type(layer) for name, layer in linear_layers(model.encoder).items()}
            feed_forward = model.encoder.encoder.layer[0].intermediate
            assert feed_forward.dense.activation == "gelu" and isinstance(feed_forward.intermediate_act_fn, nn.Identity)
            assert model.encoder.encoder.layer[0].output.dense.activation == "none"
            logits = model(x)
    assert set(fused.values()) == {FusedLinear}, "every linear layer of the encoder runs fused"
    assert torch.allclose(logits, reference, atol=1e-5, rtol=1e-5)
    assert torch.equal(logits.argmax(1), reference.argmax(1))


def test_the_model_is_given_back_unchanged_even_when_scoring_fails(model):
    before = {name: id(layer) for name, layer in model.named_modules()}
    keys = list(model.state_dict())
    with pytest.raises(RuntimeError, match="boom"), model.scoring():
        assert list(model.state_dict()) != keys  # the swapped layers show while the block runs
        raise RuntimeError("boom")
    assert {name: id(layer) for name, layer in model.named_modules()} == before
    assert list(model.state_dict()) == keys
    model.train()
    model(packed([4, 4])).sum().backward()  # eager layers again: training still has its backward


def test_nothing_is_swapped_where_the_fast_path_does_not_apply(model, tiny_bert):
    with fused_linears(model.encoder.double()) as count:  # not fp32
        assert count == 0 and all(type(layer) is nn.Linear for layer in linear_layers(model.encoder).values())
    with torch.backends.mkldnn.flags(enabled=False), fused_linears(model.encoder.float()) as count:  # oneDNN switched off
        assert count == 0
    half = TextClassifier(load_encoder(BackboneConfig(name=str(tiny_bert))), [4], "domain_incremental", precision="bf16")
    with half.scoring():  # autocast: the matrix products are bf16 already
        assert all(type(layer) is nn.Linear for layer in linear_layers(half.encoder).values())


def test_an_encoder_with_adapter_layers_is_left_as_it_is(model):
    class Adapter(nn.Module):  # stands for a PEFT / LoRA layer wrapping its base layer
        def __init__(self, base: nn.Linear) -> None:
            super().__init__()
            self.base_layer = base

        def forward(self, hidden):
            return self.base_layer(hidden)

    Adapter.__module__ = "peft.tuners.lora.layer"
    attention = model.encoder.encoder.layer[0].attention.self
    attention.query = Adapter(attention.query)
    with fused_linears(model.encoder) as count:
        assert count == 0


def test_the_evaluator_scores_through_the_fast_path_with_the_same_accuracy(model, monkeypatch):
    from cl_harness.evaluation.evaluator import task_correct
    from cl_harness.models import classifier

    x, targets = packed([12, 11, 9, 9, 7, 5, 3, 2]), torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    used = []
    real = classifier.fused_linears

    def spied(encoder):
        used.append(encoder)
        return real(encoder)

    monkeypatch.setattr(classifier, "fused_linears", spied)
    fast = task_correct(model, x, targets, 0, 4, torch.device("cpu"))
    monkeypatch.setattr(classifier, "fused_linears", lambda encoder: fused_linears(nn.Module()))
    eager = task_correct(model, x, targets, 0, 4, torch.device("cpu"))
    assert used == [model.encoder] and torch.equal(fast, eager)
