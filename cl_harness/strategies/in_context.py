"""In-context baseline: k labelled demonstrations per class in every test prompt, no weight update.

Brown et al. 2020, "Language Models are Few-Shot Learners" (NeurIPS). The demonstrations are drawn
from each task's training split with ``seed``, interleaved by class; generative backbones only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cl_harness.strategies.registry import GENERATIVE_ONLY, BuildContext, StrategyInfo


@dataclass
class InContextConfig:
    """How many demonstrations per class go before each test prompt."""

    shots: int = field(default=1, metadata={"ge": 1, "help": "demonstrations per class, from the task's training data"})
    seed: int = field(default=0, metadata={"help": "seed that draws the demonstrations"})


def build(config: InContextConfig, context: BuildContext) -> list:
    return []


INFO = StrategyInfo(
    name="in_context",
    config_cls=InContextConfig,
    build=build,
    summary="k demonstrations per class in each prompt, no training (generative backbones)",
    paper="Brown et al. 2020 (NeurIPS)",
    train_data="none",
    backbone_kinds=GENERATIVE_ONLY,  # demonstrations go into prompts
    naive_prefix_tasks=0,  # trains nothing
    demonstrations=lambda config: (config.shots, config.seed),
)
