"""The run's optimizer: fused AdamW where torch has the kernel, with the per-tensor loop's updates."""

import copy

import pytest
import torch
from torch import nn

from cl_harness.config.experiment import BackboneConfig
from cl_harness.models.backbone import load_encoder
from cl_harness.models.classifier import TextClassifier
from cl_harness.runner.optimizer import build_optimizer, can_fuse


@pytest.fixture
def classifier(tiny_bert):
    torch.manual_seed(0)
    return TextClassifier(load_encoder(BackboneConfig(name=str(tiny_bert))), [4], "domain_incremental")


def test_cpu_models_get_the_fused_kernel(classifier):
    optimizer = build_optimizer(classifier, lr=1e-3, weight_decay=0.01)
    assert optimizer.param_groups[0]["fused"] is True
    assert optimizer.param_groups[0]["weight_decay"] == 0.01


def test_parameters_the_kernel_cannot_take_fall_back_to_the_loop():
    assert not can_fuse([nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2, device="meta"))])
    assert not can_fuse([nn.Parameter(torch.zeros(2, device="meta"))])
    assert can_fuse([nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(3, dtype=torch.bfloat16))])
    optimizer = build_optimizer(nn.Linear(2, 2, device="meta"), lr=1e-3, weight_decay=0.0)
    assert not optimizer.param_groups[0]["fused"]


def test_fused_steps_match_the_per_tensor_loop(classifier):
    reference = copy.deepcopy(classifier)
    initial = {name: p.detach().clone() for name, p in classifier.named_parameters()}
    fused = build_optimizer(classifier, lr=1e-2, weight_decay=0.01)
    loop = torch.optim.AdamW(reference.parameters(), lr=1e-2, weight_decay=0.01, foreach=False)
    generator = torch.Generator().manual_seed(0)
    for _ in range(3):  # the same gradients for both, so only the update rule can differ
        for got, expected in zip(classifier.parameters(), reference.parameters()):
            got.grad = torch.randn(got.shape, generator=generator)
            expected.grad = got.grad.clone()
        fused.step()
        loop.step()
    after = dict(reference.named_parameters())
    for name, got in classifier.named_parameters():
        torch.testing.assert_close(got, after[name], atol=1e-6, rtol=1e-5, msg=name)
        assert not torch.equal(got, initial[name]), f"{name} did not move"
