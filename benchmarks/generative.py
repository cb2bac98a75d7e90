"""Training and scoring throughput of a generative backbone on the shipped generative experiment's tasks.

    python benchmarks/generative.py --data-root ../shared/data/cl_benchmark [--examples 32] [--eval-examples 40]
        [--set backbone.name=...] [--exact-match]

Loads experiments/generative_agnews.yaml (SmolLM2-135M-Instruct by default; ``--set`` overrides as in
``cl-harness run``), tokenises its tasks as instructions, then measures on the first task:
  training examples/s of full fine-tuning and of LoRA (rank 8 on the query/value projections),
  answer-token LM loss, batch ``training.batch_size``;
  scoring examples/s of rank classification (every label text scored after every prompt, in batches of
  ``training.eval_batch_size`` prompt-label rows; the prompt computed once, each label continued from its
  key/value cache), against the plain way (one prompt + label row per pair, the prompt recomputed for every
  label), as a ratio taken in this run; and optionally of greedy free-generation exact match.
Prints one JSON object. Absolute numbers on a shared machine are noise.
"""

from __future__ import annotations

import argparse
import copy
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

from cl_harness.config.loader import load_experiment  # noqa: E402
from cl_harness.evaluation.rank_classification import exact_match, rank_classification_accuracy  # noqa: E402
from cl_harness.models.generative import IGNORE, GenerativeClassifier, answer_targets, load_generative_model  # noqa: E402
from cl_harness.models.lora import default_targets, inject_lora, linear_names  # noqa: E402
from cl_harness.runner.optimizer import build_optimizer  # noqa: E402
from cl_harness.grid.prepare import check_experiment, prepare_experiment  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def train_rate(model, inputs: torch.Tensor, batch_size: int, lr: float) -> float:
    """Examples/s of answer-loss training steps over ``inputs`` (one pass, after one warm-up step)."""
    optimizer, loss = build_optimizer(model, lr, 0.0), model.criterion()
    model.train()
    batches = inputs.split(batch_size)
    optimizer.zero_grad()
    loss(model(batches[0]), batches[0][:, 2]).backward()  # warm-up, not timed
    optimizer.step()
    started = time.perf_counter()
    for x in batches:
        optimizer.zero_grad()
        loss(model(x), x[:, 2]).backward()  # the loop's loss: a batch's targets are its answer ids
        optimizer.step()
    return len(inputs) / (time.perf_counter() - started)


@torch.inference_mode()
def row_per_pair_accuracy(model, inputs: torch.Tensor, targets: torch.Tensor, candidates: torch.Tensor, units: torch.Tensor,
                          batch_size: int) -> float:
    """Rank classification the plain way: one ``prompt + label`` row per pair, each prompt recomputed per label."""
    model.eval()
    labels = candidates.shape[0]
    correct = 0
    for batch, batch_targets in zip(inputs.split(max(1, batch_size // labels)), targets.split(max(1, batch_size // labels))):
        rows = batch.repeat_interleave(labels, dim=0).clone()  # (batch * labels, 3, length)
        rows[:, 2] = IGNORE
        rows[:, 2, : candidates.shape[1]] = candidates.repeat(batch.shape[0], 1)
        logits, answers = model(rows), answer_targets(rows)  # (rows, answer, vocab), (rows, answer)
        token_log_probs = logits.log_softmax(-1).gather(-1, answers.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        scores = (token_log_probs * (answers != IGNORE)).sum(1).view(batch.shape[0], labels)  # (batch, labels)
        correct += int((units[scores.argmax(1)] == batch_targets).sum())
    return correct / len(targets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, type=Path)
    parser.add_argument("--experiment", type=Path, default=REPO / "experiments" / "generative_agnews.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="KEY=VALUE, as cl-harness run --set")
    parser.add_argument("--examples", type=int, default=32, help="training examples timed")
    parser.add_argument("--eval-examples", type=int, default=40, help="test examples scored")
    parser.add_argument("--exact-match", action="store_true", help="also time greedy generation (slow)")
    args = parser.parse_args()

    loaded = load_experiment(args.experiment, [*args.overrides, "strategies=[naive]"], args.data_root)
    prepared = prepare_experiment(check_experiment(loaded))
    config = loaded.config
    task = prepared.encoded[0]
    tokenizer = prepared.checked.tokenizer
    train = task.train_inputs[: args.examples]
    test, targets = task.test_inputs[: args.eval_examples], task.test_targets[: args.eval_examples]
    device = torch.device("cpu")

    model = GenerativeClassifier(load_generative_model(config.backbone, tokenizer), config.backbone.kind, tokenizer.pad_token_id)
    pristine = copy.deepcopy(model)  # for the LoRA measurement: loading a GGUF again costs minutes
    started = time.perf_counter()
    accuracy = rank_classification_accuracy(model, test, targets, task.candidates, task.candidate_units, config.training.eval_batch_size, device)
    scoring = len(test) / (time.perf_counter() - started)
    started = time.perf_counter()
    plain_accuracy = row_per_pair_accuracy(model, test, targets, task.candidates, task.candidate_units, config.training.eval_batch_size)
    plain_scoring = len(test) / (time.perf_counter() - started)
    result = {
        "backbone": config.backbone.name,
        "task": task.name,
        "labels": len(task.label_texts),
        "prompt_tokens_mean": float(test[:, 1].sum(1).float().mean()),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "scoring_examples_per_s": scoring,
        "scoring_label_rows_per_s": scoring * len(task.label_texts),
        "scoring_row_per_pair_examples_per_s": plain_scoring,
        "scoring_speedup_vs_row_per_pair": scoring / plain_scoring,
        "zero_shot_accuracy": accuracy,
        "zero_shot_accuracy_row_per_pair": plain_accuracy,
        "train_full_examples_per_s": train_rate(model, train, config.training.batch_size, 1e-5),
    }
    lora = pristine
    inject_lora(lora.lm, default_targets(linear_names(lora.lm)), 1, 8, 16.0, 0.0)
    result["train_lora_examples_per_s"] = train_rate(lora, train, config.training.batch_size, 1e-3)
    if args.exact_match:
        local = [task.candidate_units.tolist().index(int(u)) for u in targets]
        started = time.perf_counter()
        exact_match(model, tokenizer, test, task.label_texts, local, device, task.candidates.shape[1])
        result["exact_match_examples_per_s"] = len(test) / (time.perf_counter() - started)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
