"""What ``torch.compile`` (inductor) would give the harness's model: steady-state speed against its compile time.

    python benchmarks/compile.py [--max-length 64] [--batch-size 16] [--eval-batch-size 128] [--steps 8] [--dynamic]

Times, in one process, the harness's TextClassifier on the bundled MiniLM (fp32, full-length batches of random
token ids, as DBpedia's texts fill 64 tokens): a training step (forward, backward, fused AdamW) and an evaluation
batch, eagerly and with the encoder compiled (``nn.Module.compile``). It prints the first compiled call (the
compile), the steady-state seconds of each, their ratio, and how many steps the compile needs to pay for itself.
The harness does not compile: see docs/explanation/speed.md ("Levers not taken") for why.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402

from cl_harness.config.experiment import BackboneConfig  # noqa: E402
from cl_harness.models.backbone import load_encoder  # noqa: E402
from cl_harness.models.classifier import TextClassifier  # noqa: E402
from cl_harness.runner.optimizer import build_optimizer  # noqa: E402


def packed(batch: int, length: int) -> torch.Tensor:
    """Random full-length inputs ``(batch, 3, length)``: ids, an all-ones mask, zero token types."""
    ids = torch.randint(1000, 30000, (batch, length))
    return torch.stack([ids, torch.ones_like(ids), torch.zeros_like(ids)], dim=1)


def seconds_per_call(call, steps: int) -> tuple[float, float]:
    """(first call, mean of ``steps`` later calls after one more warm-up), in seconds."""
    start = time.perf_counter()
    call()
    first = time.perf_counter() - start
    call()
    start = time.perf_counter()
    for _ in range(steps):
        call()
    return first, (time.perf_counter() - start) / steps


def measure(compiled: bool, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    torch.manual_seed(0)
    model = TextClassifier(load_encoder(BackboneConfig()), [6], "domain_incremental")
    if compiled:
        model.encoder.compile(dynamic=args.dynamic)
    optimizer = build_optimizer(model, lr=1e-4, weight_decay=0.0)
    x, y = packed(args.batch_size, args.max_length), torch.randint(0, 6, (args.batch_size,))
    eval_x = packed(args.eval_batch_size, args.max_length)

    def train_step() -> None:
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()

    def eval_batch() -> None:
        with torch.inference_mode():
            model(eval_x)

    model.train()
    train = seconds_per_call(train_step, args.steps)
    model.eval()
    evaluate = seconds_per_call(eval_batch, max(args.steps // 2, 2))
    return {"training step": train, "evaluation batch": evaluate}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8, help="steady-state calls timed after the warm-up")
    parser.add_argument("--dynamic", action="store_true", help="compile with dynamic shapes (one graph for every length)")
    args = parser.parse_args()
    eager, compiled = measure(False, args), measure(True, args)
    print(f"MiniLM, fp32, batch {args.batch_size} (evaluation {args.eval_batch_size}) x {args.max_length} tokens, "
          f"dynamic={args.dynamic}")
    for part in eager:
        (_, plain), (first, fast) = eager[part], compiled[part]
        saved = plain - fast
        pays = f"{(first - fast) / saved:.0f} calls" if saved > 0 else "never"
        print(f"  {part:<17} eager {plain:6.3f} s   compiled {fast:6.3f} s   x{plain / fast:4.2f}   "
              f"first compiled call {first:5.1f} s   pays for itself after {pays}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
