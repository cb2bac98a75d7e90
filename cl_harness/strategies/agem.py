"""A-GEM: project the gradient so that it does not increase the loss on a memory sample (Chaudhry et al. 2019)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
from avalanche.benchmarks.utils.data_loader import GroupBalancedInfiniteDataLoader
from avalanche.training.plugins import AGEMPlugin
from torch import Tensor, nn

from cl_harness.strategies.common.gradients import materialise_reference_grads
from cl_harness.strategies.registry import BuildContext, StrategyInfo


@dataclass
class AGEMConfig:
    """Memory per task and the size of the memory sample behind each reference gradient."""

    patterns_per_experience: int = field(default=100, metadata={"help": "examples kept in memory from each task", "ge": 1})
    sample_size: int = field(default=32, metadata={"help": "memory examples per reference gradient, shared over past tasks", "ge": 1})


def flat_grad(model: nn.Module) -> Tensor:
    """All gradients in ``model.parameters()`` order, zeros where absent. ``(n_parameters,)``"""
    return torch.cat([p.grad.flatten() if p.grad is not None else p.new_zeros(p.numel()) for p in model.parameters()])


class HarnessAGEMPlugin(AGEMPlugin):
    """Avalanche's AGEMPlugin with two fixes: the projection reaches parameters the current loss left
    without a gradient, and a ``sample_size`` below the number of past tasks still draws one example per task."""

    @torch.no_grad()
    def after_backward(self, strategy, **kwargs):
        if len(self.buffers) > 0:
            materialise_reference_grads(strategy.model, self.reference_gradients)
        super().after_backward(strategy, **kwargs)

    @torch.no_grad()
    def update_memory(self, dataset, num_workers=0, **kwargs):
        """Keep a random ``patterns_per_experience`` subset of the task; rebuild the balanced memory loader."""
        if len(dataset) > self.patterns_per_experience:
            indices = list(range(len(dataset)))
            random.shuffle(indices)
            dataset = dataset.subset(indices[: self.patterns_per_experience])
        self.buffers.append(dataset)
        self._rebuild_loader(num_workers)

    def _rebuild_loader(self, num_workers: int = 0) -> None:
        self.buffer_dataloader = GroupBalancedInfiniteDataLoader(
            self.buffers,
            batch_size=max(1, self.sample_size // len(self.buffers)),  # per past task
            num_workers=num_workers,
            pin_memory=False,
            persistent_workers=num_workers > 0,
        )
        self.buffer_dliter = iter(self.buffer_dataloader)

    def __getstate__(self) -> dict:
        """Checkpoint the memory, not the loader built over it (iterators cannot be pickled)."""
        state = dict(self.__dict__)
        state.pop("buffer_dataloader", None)
        state["buffer_dliter"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.buffer_dliter = iter([])
        if self.buffers:
            self._rebuild_loader()


def build(config: AGEMConfig, context: BuildContext) -> list:
    return [HarnessAGEMPlugin(config.patterns_per_experience, config.sample_size)]


INFO = StrategyInfo(
    name="agem",
    config_cls=AGEMConfig,
    build=build,
    summary="averaged GEM: project each gradient so it does not raise the loss on a sample of past-task memory",
    paper="Chaudhry et al. 2019, Efficient Lifelong Learning with A-GEM (ICLR)",
    naive_prefix_tasks=1,  # no memory on task 1 (no reference gradient); it is filled in after_training_exp
)
