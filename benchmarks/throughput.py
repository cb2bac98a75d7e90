"""Training and evaluation throughput of the harness against plain loops, as ratios measured in one process.

    python benchmarks/throughput.py --data-root ../shared/data/cl_benchmark [--examples 192] [--max-length 128]

Measures, on AG News with the bundled MiniLM (batch 16, full fine-tuning):
  training examples/s of (a) a hand-written PyTorch loop padding every batch to max_length,
  (b) the same loop padding each batch to its longest text, (c) Avalanche's Naive on padded
  tensors, (d) the harness's naive strategy (its model trims each batch), (e) the same with
  ``training.length_bucketing``;
  evaluation examples/s of a padded inference loop against the harness's evaluator.
Absolute numbers on a shared machine are noise; read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from cl_harness.config.experiment import BackboneConfig  # noqa: E402
from cl_harness.data.benchmark import EncodedTask  # noqa: E402
from cl_harness.data.encoding import encode_texts  # noqa: E402
from cl_harness.evaluation.evaluator import evaluate_all  # noqa: E402
from cl_harness.models.backbone import load_encoder, load_tokenizer  # noqa: E402
from cl_harness.models.classifier import TextClassifier  # noqa: E402
from cl_harness.runner.hooks import LengthBucketing  # noqa: E402


class PaddedClassifier(nn.Module):
    """Encoder + linear head on full-length padded tensors (no trimming): the baseline."""

    def __init__(self, encoder: nn.Module, classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(encoder.config.hidden_size, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: (batch, 3, max_length)
        hidden = self.encoder(input_ids=x[:, 0], attention_mask=x[:, 1], token_type_ids=x[:, 2]).last_hidden_state
        mask = x[:, 1].unsqueeze(-1).float()
        return self.head((hidden * mask).sum(1) / mask.sum(1).clamp(min=1))


def load_agnews(data_root: Path, count: int) -> tuple[list[str], list[int]]:
    rows = json.loads((data_root / "agnews" / "train.json").read_text())[:count]
    names = json.loads((data_root / "agnews" / "labels.json").read_text())
    return [r["sentence"] for r in rows], [names.index(r["label"]) for r in rows]


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def plain_loop(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch: int, dynamic: bool) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for start in range(0, len(labels), batch):
        x = inputs[start : start + batch]  # (batch, 3, max_length)
        if dynamic:
            x = x[:, :, : int(x[:, 1].sum(1).max())]  # (batch, 3, longest)
        optimizer.zero_grad()
        loss_fn(model(x), labels[start : start + batch]).backward()
        optimizer.step()


def avalanche_naive(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch: int, plugins: list | None = None) -> None:
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.templates import SupervisedTemplate

    from cl_harness.data.benchmark import make_benchmark

    task = EncodedTask("agnews", 0, inputs, labels, inputs[:1], labels[:1])
    (experience,) = list(make_benchmark([task]).train_stream)
    strategy = SupervisedTemplate(
        model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=5e-5), criterion=nn.CrossEntropyLoss(),
        train_mb_size=batch, train_epochs=1, device="cpu", evaluator=EvaluationPlugin(loggers=[]), plugins=plugins,
    )
    strategy.train(experience, num_workers=0)


@torch.inference_mode()
def padded_eval(model: nn.Module, inputs: torch.Tensor, batch: int) -> None:
    model.eval()
    for start in range(0, len(inputs), batch):
        model(inputs[start : start + batch]).argmax(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, type=Path)
    parser.add_argument("--examples", type=int, default=192)
    parser.add_argument("--eval-examples", type=int, default=512)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=2, help="measure every variant this many times, keep the best")
    args = parser.parse_args()

    config = BackboneConfig()
    tokenizer = load_tokenizer(config)
    texts, labels = load_agnews(args.data_root, max(args.examples, args.eval_examples))
    inputs = encode_texts(tokenizer, texts, args.max_length)  # (n, 3, max_length)
    targets = torch.tensor(labels)
    train_x, train_y = inputs[: args.examples], targets[: args.examples]
    lengths = inputs[:, 1].sum(1).float()
    print(f"AG News: {args.examples} training texts, median {lengths.median():.0f} tokens, max_length {args.max_length}")
    torch.manual_seed(0)

    def fresh_padded() -> nn.Module:
        return PaddedClassifier(load_encoder(config), 4)

    def fresh_harness() -> nn.Module:
        return TextClassifier(load_encoder(config), [4], "domain_incremental")

    variants = {
        "(a) plain loop, padded": (fresh_padded, lambda m: plain_loop(m, train_x, train_y, args.batch_size, False)),
        "(b) plain loop, dynamic padding": (fresh_padded, lambda m: plain_loop(m, train_x, train_y, args.batch_size, True)),
        "(c) Avalanche Naive, padded": (fresh_padded, lambda m: avalanche_naive(m, train_x, train_y, args.batch_size)),
        "(d) cl-harness naive": (fresh_harness, lambda m: avalanche_naive(m, train_x, train_y, args.batch_size)),
        "(e) cl-harness naive, bucketing": (
            fresh_harness, lambda m: avalanche_naive(m, train_x, train_y, args.batch_size, [LengthBucketing()])
        ),
    }
    plain_loop(fresh_padded(), train_x[:32], train_y[:32], args.batch_size, False)  # warm-up
    seconds: dict[str, float] = {}
    for _ in range(args.rounds):  # round-robin, best of rounds: load on a shared machine hits all variants alike
        for name, (make, train) in variants.items():
            model = make()
            seconds[name] = min(seconds.get(name, float("inf")), timed(lambda: train(model)))
    print(f"\ntraining ({args.examples} examples, batch {args.batch_size}):")
    base = args.examples / seconds["(c) Avalanche Naive, padded"]
    best = args.examples / seconds["(b) plain loop, dynamic padding"]
    for name, s in seconds.items():
        rate = args.examples / s
        print(f"  {name:<34} {rate:6.1f} ex/s   x{rate / base:4.2f} vs (c)   x{rate / best:4.2f} vs (b)")

    eval_x, eval_y = inputs[: args.eval_examples], targets[: args.eval_examples]
    padded_model, harness_model = fresh_padded(), fresh_harness()
    padded_s = min(timed(lambda: padded_eval(padded_model, eval_x, args.eval_batch_size)) for _ in range(args.rounds))
    harness_s = min(
        timed(lambda: evaluate_all(harness_model, [(eval_x, eval_y, 0)], args.eval_batch_size, torch.device("cpu")))
        for _ in range(args.rounds)
    )
    print(f"\nevaluation ({args.eval_examples} examples, batch {args.eval_batch_size}):")
    print(f"  padded inference loop              {args.eval_examples / padded_s:6.1f} ex/s")
    print(f"  cl-harness evaluator               {args.eval_examples / harness_s:6.1f} ex/s   x{padded_s / harness_s:4.2f}")
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
