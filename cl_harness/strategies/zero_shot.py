"""Zero-shot baseline: no training; the one row of its accuracy matrix is the initial model's.

On a generative backbone the initial row is a real zero-shot score (rank classification of the label
texts); on an encoder it is real only with ``backbone.head_init: label_names``.
Brown et al. 2020, "Language Models are Few-Shot Learners" (NeurIPS) for zero- and few-shot prompting.
"""

from __future__ import annotations

from dataclasses import dataclass

from cl_harness.strategies.registry import BuildContext, StrategyInfo


@dataclass
class ZeroShotConfig:
    """No options: nothing is trained."""


def build(config: ZeroShotConfig, context: BuildContext) -> list:
    return []


INFO = StrategyInfo(
    name="zero_shot",
    config_cls=ZeroShotConfig,
    build=build,
    summary="no training: the pretrained model (or label-name heads) scored on every task",
    paper="Brown et al. 2020 (NeurIPS)",
    train_data="none",
    naive_prefix_tasks=0,  # trains nothing
)
