"""MIR: replay the memory examples whose loss a virtual update on the current batch would raise most (Aljundi et al. 2019)."""

from __future__ import annotations

from dataclasses import dataclass, field

from avalanche.training.plugins import MIRPlugin
from avalanche.training.plugins.mir import cycle
from torch.utils.data import DataLoader

from cl_harness.strategies.common.buffers import make_storage_policy
from cl_harness.config.yaml_io import KeyPath, Source
from cl_harness.strategies.registry import ENCODER_ONLY, BuildContext, StrategyInfo


@dataclass
class MIRConfig:
    """Memory size, the candidates scored per step and how many of them are replayed."""

    mem_size: int = field(default=200, metadata={"help": "examples in the class-balanced memory", "ge": 1})
    subsample: int = field(
        default=50, metadata={"help": "memory candidates scored by interference each step (at least replay_batch_size)", "ge": 1}
    )
    replay_batch_size: int | None = field(
        default=None, metadata={"help": "most-interfered candidates replayed each step (default: the training batch size, "
                                        "at most subsample)", "ge": 1}
    )

    def check(self, source: Source, path: KeyPath) -> None:
        if self.replay_batch_size is not None and self.subsample < self.replay_batch_size:
            raise source.error(path + ("subsample",), f"must be at least replay_batch_size ({self.replay_batch_size}), got "
                               f"{self.subsample}: the replayed examples are the most interfered of the candidates scored")


class HarnessMIRPlugin(MIRPlugin):
    """Avalanche's MIRPlugin with the memory loader built over the whole memory.

    After each experience Avalanche's version drops from the replay loader every class present in
    the experience's *last minibatch*. That suits its online setting (many tiny experiences); on a
    task stream the last minibatch usually holds every class of the task, so the task just learnt is
    never replayed (after a first task of two classes nothing is). Here all of the memory is used.
    The memory is class balanced by (task, class) in task-incremental streams.
    """

    def __init__(self, batch_size_mem: int, mem_size: int, subsample: int, scenario: str) -> None:
        super().__init__(batch_size_mem=batch_size_mem, mem_size=mem_size, subsample=subsample)
        self.storage_policy = make_storage_policy("class_balanced", mem_size, scenario)

    def after_training_exp(self, strategy, **kwargs):
        self.storage_policy.post_adapt(strategy, strategy.experience)
        self._rebuild_loader()

    def _rebuild_loader(self) -> None:
        memory = self.storage_policy.buffer
        if len(memory) > self.batch_size_mem:
            collate = getattr(memory, "collate_fn", None)
            self.replay_loader = cycle(DataLoader(memory, batch_size=self.subsample, shuffle=True, collate_fn=collate))
        else:
            self.replay_loader = None

    def __getstate__(self) -> dict:
        """Checkpoint the memory, not the loader cycling over it (iterators cannot be pickled)."""
        return {**self.__dict__, "replay_loader": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._rebuild_loader()


def build(config: MIRConfig, context: BuildContext) -> list:
    replay_batch_size = config.replay_batch_size or min(context.batch_size, config.subsample)
    return [HarnessMIRPlugin(replay_batch_size, config.mem_size, config.subsample, context.scenario)]


INFO = StrategyInfo(
    name="mir",
    config_cls=MIRConfig,
    build=build,
    summary="maximally interfered retrieval: replay the memory examples a virtual step on the current batch would hurt most",
    paper="Aljundi et al. 2019, Online Continual Learning with Maximally Interfered Retrieval (NeurIPS)",
    backbone_kinds=ENCODER_ONLY,  # it ranks memory by the increase of a classification loss
    naive_prefix_tasks=1,  # no replay loader on task 1 (before_backward returns); the memory is filled in after_training_exp
)
