"""fp16 loss scaling: scaled backward, true gradients for the update, skipped steps on overflow."""

import types

import pytest
import torch
from torch import nn

from cl_harness.runner.checkpoint import load_checkpoint, save_checkpoint
from cl_harness.runner.loss_scaling import DynamicLossScale, LossScaling
from cl_harness.runner.optimizer import build_optimizer


def linear_and_loss():
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    x, y = torch.randn(8, 4), torch.tensor([0, 1] * 4)
    return model, lambda: nn.functional.cross_entropy(model(x), y)


def backward_through_plugin(plugin, model, loss):
    strategy = types.SimpleNamespace(model=model, loss=loss)
    plugin.before_backward(strategy)
    scaled = strategy.loss
    strategy.loss.backward()
    plugin.after_backward(strategy)
    return strategy, scaled


def test_the_loss_is_scaled_for_backward_and_the_gradients_unscaled_after():
    model, loss_fn = linear_and_loss()
    loss_fn().backward()
    expected = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()

    loss = loss_fn()
    scale = DynamicLossScale(initial=1024.0)
    strategy, scaled = backward_through_plugin(LossScaling(scale), model, loss)
    assert float(scaled.detach()) == pytest.approx(1024.0 * float(loss.detach()))
    assert strategy.loss is loss, "later plugins and the progress bar read the true loss"
    for got, want in zip((p.grad for p in model.parameters()), expected):
        torch.testing.assert_close(got, want)
    assert scale.skipped_steps == 0 and scale.finite_steps == 1


def test_an_overflowing_step_is_skipped_and_the_scale_halved():
    model, loss_fn = linear_and_loss()
    optimizer = build_optimizer(model, lr=0.1, weight_decay=0.01)
    before = [p.detach().clone() for p in model.parameters()]
    scale = DynamicLossScale(initial=float("inf"))  # every scaled gradient overflows
    backward_through_plugin(LossScaling(scale), model, loss_fn())
    assert all(p.grad is None for p in model.parameters())
    optimizer.step()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before)), "no parameter moved"
    assert not optimizer.state, "no optimizer state was touched"
    assert scale.skipped_steps == 1 and scale.scale == float("inf") / 2


def test_the_scale_halves_on_overflow_and_doubles_after_a_run_of_finite_steps():
    param = nn.Parameter(torch.zeros(3))
    scale = DynamicLossScale(initial=8.0, growth_interval=2)
    param.grad = torch.tensor([1.0, float("nan"), 2.0])
    assert not scale.unscale_or_skip([param]) and scale.scale == 4.0
    for expected in (4.0, 8.0, 8.0):
        param.grad = torch.full((3,), 4.0)
        assert scale.unscale_or_skip([param])
        assert scale.scale == expected
    torch.testing.assert_close(param.grad, torch.full((3,), 0.5))  # divided by the scale of that step (8)
    tiny = DynamicLossScale(initial=1.0, minimum=1.0)
    param.grad = torch.tensor([float("inf")] * 3)
    tiny.unscale_or_skip([param])
    assert tiny.scale == 1.0, "the scale never drops below its minimum"


def test_the_scale_travels_with_the_checkpoint(tmp_path):
    model = nn.Linear(2, 2)
    scale = DynamicLossScale(initial=512.0)
    scale.finite_steps, scale.skipped_steps = 7, 3
    clock = types.SimpleNamespace(train_iterations=5)
    save_checkpoint(tmp_path, 1, model, build_optimizer(model, 0.1, 0.0), [], clock, scale)
    restored = DynamicLossScale()
    restored.load_state_dict(load_checkpoint(tmp_path)["loss_scale"])
    assert restored.state_dict() == {"scale": 512.0, "finite_steps": 7, "skipped_steps": 3}


def test_an_fp16_run_trains_with_loss_scaling_and_reports_skipped_steps(tiny_run):
    result, strategy = tiny_run({"ewc": {"ewc_lambda": 10.0}}, precision="fp16")
    assert result.status == "FINISHED"
    (scaling,) = [p for p in strategy.plugins if isinstance(p, LossScaling)]
    later = strategy.plugins[strategy.plugins.index(scaling) + 1 :]
    assert all(type(p).__module__.startswith("avalanche.") for p in later), "only Avalanche's clock and evaluator follow"
    assert scaling.loss_scale.finite_steps + result.metrics["fp16_skipped_steps"] > 0, "every step went through the scaler"
    assert torch.isfinite(torch.tensor(result.matrix)).all() and max(result.matrix[0]) > 0.0
