"""LFL: freeze the classifier after the first task and keep the new model's features close to the old model's.

Jung, Ju, Jung & Kim 2016, "Less-forgetting Learning in Deep Neural Networks" (arXiv:1607.00122).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from avalanche.training.plugins import LFLPlugin

from cl_harness.strategies.registry import ENCODER_ONLY, BuildContext, StrategyInfo


@dataclass
class LFLConfig:
    """Less-Forgetful Learning: loss + lambda_e * mean((f(x) - f_old(x))^2) with the classifier frozen."""

    lambda_e: float = field(
        default=1.0, metadata={"help": "lambda_e, the weight of the Euclidean loss between new and old features (1 as in Jung et al. "
                             "2016; docs/defaults.md)", "ge": 0.0}
    )


class LessForgetfulLearning(LFLPlugin):
    """Avalanche's LFLPlugin reading the features from ``TextClassifier.encode`` (pooled encoder output).

    The plugin asks for ``model.get_features`` (Avalanche's ``BaseModel``); the harness's model gives the
    same thing as ``encode``. Two changes besides: the plugin put the *trained* model in eval mode on
    every step (and left it there, so training ran without dropout), and its teacher is now run under
    ``no_grad``. After each task Avalanche's code copies the model into a frozen, eval-mode teacher and
    freezes the last linear layer, which in this model is the single head.

    Only the domain-incremental scenario fits the method: the paper keeps the label set and the decision
    boundaries; in class-incremental the frozen head could never learn the new classes, and in
    task-incremental the "last linear layer" is the last task's head, not the old one.
    """

    def compute_features(self, model, x):
        """``((batch, hidden), (batch, hidden))``: the model's features (with grad) and the frozen teacher's."""
        assert self.prev_model is not None
        features = model.encode(x)
        with torch.no_grad():
            teacher_features = self.prev_model.encode(x)
        return features, teacher_features

    def before_training(self, strategy, **kwargs):
        if not hasattr(strategy.model, "encode"):
            raise NotImplementedError("LFL needs a model with encode(x) -> features")


def build(config: LFLConfig, context: BuildContext) -> list:
    return [LessForgetfulLearning(lambda_e=config.lambda_e)]


INFO = StrategyInfo(
    name="lfl",
    config_cls=LFLConfig,
    build=build,
    summary="freeze the classifier and keep the encoder's features on new data close to the old encoder's",
    paper="Jung et al. 2016 (arXiv:1607.00122)",
    scenarios=("domain_incremental",),
    backbone_kinds=ENCODER_ONLY,  # it distils an encoder's pooled sentence features
    naive_prefix_tasks=1,  # no old model before after_training_exp of task 1 (the penalty is 0); the head is frozen there
    strength=("lambda_e", ""),
)
