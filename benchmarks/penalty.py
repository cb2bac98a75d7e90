"""The quadratic EWC/SI penalty on all-MiniLM-L6-v2's 22.7M parameters: the fused version against a per-parameter graph.

    python benchmarks/penalty.py [--rounds 10] [--tasks 2]

Times one forward and backward of ``lambda * sum_k F_k (theta - theta*_k)^2`` summed over ``--tasks`` past tasks
(EWC's separate mode at task 3 has two): cl-harness's ``ewc_penalty`` (``torch._foreach_*`` passes and a hand-written
backward) against the plain autograd loop over parameters (sub, pow, mul, sum per parameter, Avalanche's way). Both
sides run in this process, alternating; it prints seconds per call, their ratio and the largest gradient difference.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from transformers import BertConfig, BertModel

from cl_harness.strategies.common.importance import ewc_penalty


def per_parameter_penalty(model, anchors, importances):
    """The reference: one autograd graph node chain per parameter."""
    penalty = torch.zeros(())
    for name, param in model.named_parameters():
        penalty = penalty + (importances[name] * (param - anchors[name]).pow(2)).sum()
    return penalty


def time_call(fn, model, tasks, rounds: int) -> tuple[float, list[torch.Tensor]]:
    """Seconds per forward+backward of ``1000 * sum over tasks of fn``, and the gradients of the last call."""
    def once():
        model.zero_grad(set_to_none=True)
        (1000.0 * sum(fn(model, a, f) for a, f in tasks)).backward()

    once()
    started = time.perf_counter()
    for _ in range(rounds):
        once()
    return (time.perf_counter() - started) / rounds, [p.grad.clone() for p in model.parameters()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--tasks", type=int, default=2, help="past tasks, each with its own anchor and importances")
    args = parser.parse_args()
    torch.manual_seed(0)
    # all-MiniLM-L6-v2's shape: 6 layers, hidden 384, 12 heads, vocabulary 30,522 (22.7M parameters)
    model = BertModel(BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536))
    tasks = [
        ({n: p.detach() + 0.01 * torch.randn_like(p) for n, p in model.named_parameters()},
         {n: torch.rand_like(p) * 1e-4 for n, p in model.named_parameters()})
        for _ in range(args.tasks)
    ]
    plain, plain_grads = time_call(per_parameter_penalty, model, tasks, args.rounds)
    fused, fused_grads = time_call(ewc_penalty, model, tasks, args.rounds)
    difference = max(float((a - b).abs().max()) for a, b in zip(plain_grads, fused_grads))
    print(json.dumps({
        "parameters": sum(p.numel() for p in model.parameters()), "past_tasks": args.tasks,
        "per_parameter_graph_s": round(plain, 4), "cl_harness_s": round(fused, 4), "speedup": round(plain / fused, 2),
        "max_gradient_difference": difference, "threads": torch.get_num_threads(), "machine": platform.machine(),
    }, indent=1))


if __name__ == "__main__":
    main()
