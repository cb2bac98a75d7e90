"""Wall time of a whole small grid: the harness against plain Avalanche strategies in a sequential loop.

    python benchmarks/grid.py --data-root ../shared/data/cl_benchmark [--strategies naive ewc lwf replay der]
        [--seeds 0 1] [--per-class 40] [--test-per-class 50] [--max-length 64] [--workers 1]
        [--harness-args "--no-prefix-sharing"] [--bf16-harness] [--dry-run]

Both sides train the same grid: every strategy x seed over 3 class-incremental DBpedia tasks of 2 classes
(the bundled MiniLM, 1 epoch, batch 16, lr 1e-4), and score every task after every task.
  harness:   one ``cl-harness run`` of a generated experiment (its own tracking store, a temporary folder);
  avalanche: what a user would write by hand: texts padded to max_length once, Avalanche's Naive, EWC, LwF,
             Replay and DER strategies on those tensors, a padded evaluation loop after every task, no tracking.
Each side is a program of its own, timed from its start to its exit (interpreter, imports and all). It prints the
wall-time ratio and where each side spent its time: tokenise, train, evaluate, and the rest (process start and
imports on both sides; for the harness also model loading, checkpoints and tracking). Read the ratio; absolute
seconds on a shared machine are noise. Each side also prints its mean final accuracy over the grid.
--bf16-harness runs the harness a second time with ``training.precision: bf16`` (autocast; a compute lever on CPUs
with AMX or AVX512-BF16) and prints that ratio too, against the same fp32 Avalanche run: not like for like, which
is why its accuracy is printed beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shlex
import subprocess
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

REPO = Path(__file__).resolve().parents[1]
CLASS_PAIRS = [["Company", "Educational Institution"], ["Artist", "Athlete"], ["Office Holder", "Mean of Transportation"]]
AVALANCHE_STRATEGIES = ("naive", "ewc", "lwf", "replay", "der")
# The same hyperparameters on both sides (the harness's shipped comparison values).
STRATEGY_PARAMS = {
    "naive": {},
    "ewc": {"ewc_lambda": 1000.0},
    "lwf": {"alpha": 1.0, "temperature": 2.0},
    "replay": {"mem_size": 60},
    "der": {"mem_size": 60, "alpha": 0.3, "beta": 0.5},
}
TRAINING = {"epochs": 1, "batch_size": 16, "eval_batch_size": 128, "lr": 1e-4}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data" / "cl_benchmark")
    parser.add_argument("--strategies", nargs="+", default=list(AVALANCHE_STRATEGIES), choices=AVALANCHE_STRATEGIES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--per-class", type=int, default=40, help="training examples per class")
    parser.add_argument("--test-per-class", type=int, default=50, help="test examples per class")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="the harness's --workers")
    parser.add_argument("--device", default="cpu", help="cpu or cuda, for both sides (default cpu)")
    parser.add_argument("--harness-args", default="", help="more arguments for `cl-harness run`, e.g. '--no-prefix-sharing'")
    parser.add_argument("--skip-avalanche", action="store_true", help="time the harness alone")
    parser.add_argument("--bf16-harness", action="store_true", help="also time the harness with training.precision bf16")
    parser.add_argument("--dry-run", action="store_true", help="write and validate the experiment, print the plan, train nothing")
    parser.add_argument("--avalanche-only", type=Path, metavar="JSON", help=argparse.SUPPRESS)  # the Avalanche side's own process
    args = parser.parse_args(argv)
    args.data_root = args.data_root.resolve()  # written into a stream file in a temporary folder
    return args


def write_experiment(folder: Path, args: argparse.Namespace) -> Path:
    """The grid as a stream and an experiment YAML under ``folder``; returns the experiment's path."""
    import yaml

    tasks = []
    for pair in CLASS_PAIRS:
        tasks.append({
            "name": "_".join(name.split()[0].lower() for name in pair),
            "source": {"type": "files", "test_file": str(args.data_root / "dbpedia" / "test.json")},
            "text_field": "sentence", "label_field": "label",
            "label_names": str(args.data_root / "dbpedia" / "labels.json"),
            "classes": pair, "train_per_class": args.per_class, "test_per_class": args.test_per_class,
            "test_fraction": 0.2,
        })
    stream = {"name": "grid-benchmark", "scenario": "class_incremental", "tasks": tasks}
    (folder / "stream.yaml").write_text(yaml.safe_dump(stream, sort_keys=False))
    experiment = {
        "name": "grid-benchmark", "stream": "stream.yaml", "backbone": "bundled:all-MiniLM-L6-v2",
        "training": {**TRAINING, "max_length": args.max_length, "device": args.device},
        "strategies": [name if not STRATEGY_PARAMS[name] else {name: STRATEGY_PARAMS[name]} for name in args.strategies],
        "seeds": list(args.seeds),
    }
    path = folder / "experiment.yaml"
    path.write_text(yaml.safe_dump(experiment, sort_keys=False))
    return path


def run_harness(experiment: Path, folder: Path, args: argparse.Namespace, store: str = "mlruns", extra: tuple = ()) -> dict[str, float]:
    """One ``cl-harness run`` of the grid (tracked in ``folder/store``); its wall time and the parts its runs logged."""
    uri = f"sqlite:///{folder / store / 'mlflow.db'}"
    command = [sys.executable, "-m", "cl_harness", "run", str(experiment), "--tracking-uri", uri, "--no-progress",
               "--workers", str(args.workers), *shlex.split(args.harness_args), *extra]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"cl-harness run exited {done.returncode}:\n{done.stderr[-2000:]}")
    return {"wall": wall, **harness_parts(uri)}


def harness_parts(uri: str) -> dict[str, float]:
    """Seconds the grid's runs logged for training, scoring and tokenising, and the children's mean final accuracy.

    train: the children's ``train_time_s`` summed over steps, less the parent's ``train_time_saved_s`` (a forked run's
    task 1 carries the prefix's seconds, which were spent once per prefix); evaluate: their ``eval_time_s``; tokenise:
    the parent's ``tokenise_time_s``.
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (experiment,) = client.search_experiments(filter_string="name = 'grid-benchmark'")
    parts: dict[str, float] = defaultdict(float)
    accuracies = []
    for run in client.search_runs([experiment.experiment_id]):
        if run.data.tags.get("cl_harness.role") != "child":
            parts["tokenise"] += run.data.metrics.get("tokenise_time_s", 0.0)
            parts["train"] -= run.data.metrics.get("train_time_saved_s", 0.0)
            continue
        for key, part in (("train_time_s", "train"), ("eval_time_s", "evaluate")):
            parts[part] += sum(m.value for m in client.get_metric_history(run.info.run_id, key))
        if "acc" in run.data.metrics:
            accuracies.append(run.data.metrics["acc"])
    return {**parts, "acc": sum(accuracies) / len(accuracies) if accuracies else float("nan")}


def run_avalanche(args: argparse.Namespace) -> dict[str, float]:
    """The grid as a user would write it with Avalanche: padded tensors, one strategy object per run, no tracking."""
    import torch
    from avalanche.benchmarks import tensors_benchmark
    from avalanche.training.plugins import EvaluationPlugin
    from throughput import PaddedClassifier  # the padded baseline model of the throughput benchmark, beside this file

    from cl_harness.config.experiment import BackboneConfig
    from cl_harness.data.encoding import encode_texts
    from cl_harness.models.backbone import load_encoder, load_tokenizer

    parts: dict[str, float] = defaultdict(float)
    started = time.perf_counter()
    rows = json.loads((args.data_root / "dbpedia" / "test.json").read_text())
    tokenizer = load_tokenizer(BackboneConfig())
    tick = time.perf_counter()
    splits = []  # per task: (train x, train y, test x, test y)
    for task, pair in enumerate(CLASS_PAIRS):
        train_x, train_y, test_x, test_y = [], [], [], []
        for offset, name in enumerate(pair):
            texts = [r["sentence"] for r in rows if r["label"] == name]
            random.Random(task).shuffle(texts)
            cut = int(len(texts) * 0.8)
            train_x += texts[:cut][: args.per_class]
            test_x += texts[cut:][: args.test_per_class]
            train_y += [2 * task + offset] * min(cut, args.per_class)
            test_y += [2 * task + offset] * len(texts[cut:][: args.test_per_class])
        train_inputs = encode_texts(tokenizer, train_x, args.max_length)  # (n, 3, max_length), padded to max_length
        test_inputs = encode_texts(tokenizer, test_x, args.max_length)
        splits.append((train_inputs, torch.tensor(train_y), test_inputs, torch.tensor(test_y)))
    parts["tokenise"] += time.perf_counter() - tick

    benchmark = tensors_benchmark(
        train_tensors=[(x, y) for x, y, _, _ in splits], test_tensors=[(x, y) for _, _, x, y in splits], task_labels=[0] * len(splits)
    )
    classes = 2 * len(CLASS_PAIRS)
    final_accuracies = []
    for seed in args.seeds:
        for name in args.strategies:
            torch.manual_seed(seed)
            random.seed(seed)
            tick = time.perf_counter()
            model = PaddedClassifier(load_encoder(BackboneConfig()), classes)
            parts["load model"] += time.perf_counter() - tick
            common = dict(
                model=model, optimizer=torch.optim.AdamW(model.parameters(), lr=TRAINING["lr"]), criterion=torch.nn.CrossEntropyLoss(),
                train_mb_size=TRAINING["batch_size"], train_epochs=TRAINING["epochs"], eval_mb_size=TRAINING["eval_batch_size"],
                device=args.device, evaluator=EvaluationPlugin(loggers=[]),
            )
            strategy = avalanche_strategy(name, STRATEGY_PARAMS[name], common)
            for experience in benchmark.train_stream:
                tick = time.perf_counter()
                strategy.train(experience, num_workers=0)
                parts["train"] += time.perf_counter() - tick
                tick = time.perf_counter()
                scores = padded_accuracies(model, splits, TRAINING["eval_batch_size"], torch.device(args.device))
                parts["evaluate"] += time.perf_counter() - tick
            final_accuracies.append(sum(scores) / len(scores))  # the harness's acc: mean over tasks after the last
    parts["wall"] = time.perf_counter() - started
    return {**parts, "acc": sum(final_accuracies) / len(final_accuracies)}


def run_avalanche_program(args: argparse.Namespace, folder: Path) -> dict[str, float]:
    """``run_avalanche`` as its own program (``python grid.py --avalanche-only``), timed from start to exit like the harness.

    A user's script pays for its interpreter and its imports (torch, Avalanche, transformers) as ``cl-harness run`` does;
    the parts it reports come back through a JSON file, and what is not a part (start, imports) shows as the rest.
    """
    out = folder / "avalanche.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--data-root", str(args.data_root), "--strategies", *args.strategies,
               "--seeds", *map(str, args.seeds), "--per-class", str(args.per_class), "--test-per-class", str(args.test_per_class),
               "--max-length", str(args.max_length), "--device", args.device, "--avalanche-only", str(out)]
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"the Avalanche side exited {done.returncode}:\n{done.stderr[-2000:]}")
    return {**json.loads(out.read_text()), "wall": wall}


def avalanche_strategy(name: str, params: dict, common: dict):
    """Avalanche's own strategy class for ``name`` with the grid's hyperparameters."""
    from avalanche.training import DER, EWC, LwF, Naive, Replay

    if name == "ewc":
        return EWC(ewc_lambda=params["ewc_lambda"], **common)
    if name == "lwf":
        return LwF(alpha=params["alpha"], temperature=params["temperature"], **common)
    if name == "replay":
        return Replay(mem_size=params["mem_size"], **common)
    if name == "der":
        return DER(mem_size=params["mem_size"], alpha=params["alpha"], beta=params["beta"], **common)
    return Naive(**common)


def padded_accuracies(model, splits: list, batch: int, device) -> list[float]:
    """Accuracy on every task's test tensors, batch by batch at full padded length."""
    import torch

    model.eval()
    scores = []
    with torch.inference_mode():
        for _, _, test_x, test_y in splits:
            test_x, test_y = test_x.to(device), test_y.to(device)
            right = sum(int((model(test_x[s : s + batch]).argmax(1) == test_y[s : s + batch]).sum()) for s in range(0, len(test_y), batch))
            scores.append(right / len(test_y))
    return scores


def breakdown(parts: dict[str, float]) -> str:
    times = {k: v for k, v in parts.items() if k not in ("wall", "acc")}
    shown = times | {"rest": max(parts["wall"] - sum(times.values()), 0.0)}
    return ", ".join(f"{k} {v:.1f} s" for k, v in shown.items()) + f"; mean acc {100 * parts['acc']:.1f}%"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.avalanche_only:
        args.avalanche_only.write_text(json.dumps(run_avalanche(args)))
        return 0
    runs = len(args.strategies) * len(args.seeds)
    print(f"grid: {', '.join(args.strategies)} x seeds {args.seeds} = {runs} runs, 3 DBpedia tasks of 2 classes, "
          f"{args.per_class} train / {args.test_per_class} test per class, max_length {args.max_length}")
    with tempfile.TemporaryDirectory(prefix="cl-grid-bench-") as tmp:
        folder = Path(tmp)
        experiment = write_experiment(folder, args)
        if args.dry_run:
            command = [sys.executable, "-m", "cl_harness", "validate", str(experiment), "--data-root", str(args.data_root)]
            done = subprocess.run(command, cwd=folder, capture_output=True, text=True)
            print(done.stdout.strip() or done.stderr.strip()[-2000:])
            print(f"dry run: would run `cl-harness run` with --workers {args.workers} {args.harness_args}, "
                  f"then the same {runs} runs as plain Avalanche strategies")
            return done.returncode
        harness = run_harness(experiment, folder, args)
        print(f"\nharness      {harness['wall']:7.1f} s   ({breakdown(harness)})")
        bf16 = run_harness(experiment, folder, args, "mlruns-bf16", ("--set", "training.precision=bf16")) if args.bf16_harness else None
        if bf16:
            print(f"harness bf16 {bf16['wall']:7.1f} s   ({breakdown(bf16)})")
        if not args.skip_avalanche:
            avalanche = run_avalanche_program(args, folder)
            print(f"avalanche    {avalanche['wall']:7.1f} s   ({breakdown(avalanche)})")
            print(f"\nwhole grid: harness / avalanche wall time = x{harness['wall'] / avalanche['wall']:.2f} (target <= 0.5)")
            if bf16:
                print(f"whole grid: harness bf16 / avalanche fp32 wall time = x{bf16['wall'] / avalanche['wall']:.2f}")
    import torch

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
