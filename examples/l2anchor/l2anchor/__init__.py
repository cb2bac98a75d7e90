"""L2 anchor: after each task, an L2 pull toward the weights it ended with (the quadratic baseline of Kirkpatrick et al. 2017)."""

from dataclasses import dataclass, field

from avalanche.core import SupervisedPlugin

from cl_harness.strategies import BuildContext, StrategyInfo


@dataclass
class L2AnchorConfig:
    """How strongly the weights are pulled back toward the previous task's."""

    lam: float = field(default=1.0, metadata={"help": "weight of the penalty lam * sum (theta - theta_prev)^2", "ge": 0.0})


class L2Anchor(SupervisedPlugin):
    """Adds lam * ||theta - theta_prev||^2 to the loss from task 2 on; theta_prev: the weights after the previous task."""

    def __init__(self, lam: float) -> None:
        super().__init__()
        self.lam = lam
        self.anchor = {}  # parameter name -> its value after the previous task (saved in checkpoints with the plugin)

    def after_training_exp(self, strategy, **kwargs):
        self.anchor = {name: p.detach().clone() for name, p in strategy.model.named_parameters() if p.requires_grad}

    def before_backward(self, strategy, **kwargs):
        if self.anchor:
            penalty = sum(((p - self.anchor[name]) ** 2).sum() for name, p in strategy.model.named_parameters() if name in self.anchor)
            strategy.loss += self.lam * penalty


def build(config: L2AnchorConfig, context: BuildContext) -> list:
    return [L2Anchor(config.lam)]


L2_ANCHOR = StrategyInfo(
    name="l2anchor",
    config_cls=L2AnchorConfig,
    build=build,
    summary="an L2 pull toward the weights the previous task ended with",
    paper="L2 baseline of Kirkpatrick et al. 2017 (PNAS)",
    naive_prefix_tasks=1,  # acts in after_training_exp and from task 2 on: task 1 trains as naive does
)
