"""Training and evaluation throughput of the harness against plain loops, as ratios measured in one process.

    python benchmarks/throughput.py --data-root ../shared/data/cl_benchmark [--examples 192] [--max-length 128]
        [--rounds 2] [--eval-rounds 5] [--skip-training] [--skip-memory] [--device cuda] [--precision bf16]

Measures, on AG News with the bundled MiniLM (batch 16, full fine-tuning):
  training examples/s of (a) a hand-written PyTorch loop padding every batch to max_length,
  (b) the same loop padding each batch to its longest text, (c) Avalanche's Naive on padded
  tensors, (d) the harness's naive strategy (its model trims each batch, its optimizer is fused
  AdamW), (e) the same with ``training.length_bucketing``, (f) loop (b) with fused AdamW, for
  reference;
  evaluation examples/s of a padded inference loop against the harness's evaluator, with and without its fused
  scoring path (models/fused_inference.py);
  replay (two AG News tasks, length bucketing off) of Avalanche's ReplayPlugin on padded tensors
  against the harness's replay;
  peak memory of a 5-task against a 2-task class-incremental replay run (DBpedia, 2 classes a task).
In an fp32 run, (g) is the harness's naive with ``training.precision: bf16`` and the evaluation has a bf16 harness
line too: bf16 autocast is a compute lever on CPUs with AMX or
AVX512-BF16 (and on GPUs), timed beside the fp32 variants, never mixed into their ratios.
With ``--precision bf16|fp16`` the plain loops and Avalanche run under torch.autocast (fp16 without loss
scaling: a timing, not a recipe) and the harness's models use their own ``training.precision`` path.
Absolute numbers on a shared machine are noise; read the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from cl_harness.config.experiment import BackboneConfig  # noqa: E402
from cl_harness.data.benchmark import EncodedTask  # noqa: E402
from cl_harness.data.encoding import encode_texts  # noqa: E402
from cl_harness.evaluation.evaluator import Evaluator  # noqa: E402
from cl_harness.models.backbone import load_encoder, load_model_config, load_tokenizer  # noqa: E402
from cl_harness.models.classifier import TextClassifier  # noqa: E402
from cl_harness.runner.hooks import LengthBucketing  # noqa: E402
from cl_harness.runner.loss_scaling import DynamicLossScale, LossScaling  # noqa: E402
from cl_harness.runner.optimizer import build_optimizer  # noqa: E402
from cl_harness.tasks import default_kinds  # noqa: E402
from cl_harness.tasks.registry import KindEnv  # noqa: E402


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


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> float:
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - start


def autocast(device: torch.device, precision: str):
    """The autocast context a user would wrap a plain loop in for ``precision``."""
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def adamw(model: nn.Module, harness: bool) -> torch.optim.Optimizer:
    """The harness's optimizer (fused AdamW where possible), or torch's AdamW as a hand-written loop would make it."""
    return build_optimizer(model, lr=5e-5, weight_decay=0.01) if harness else torch.optim.AdamW(model.parameters(), lr=5e-5)


def plain_loop(model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch: int, dynamic: bool, fused: bool = False) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=fused)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for start in range(0, len(labels), batch):
        x = inputs[start : start + batch]  # (batch, 3, max_length)
        if dynamic:
            x = x[:, :, : int(x[:, 1].sum(1).max())]  # (batch, 3, longest)
        optimizer.zero_grad()
        loss_fn(model(x), labels[start : start + batch]).backward()
        optimizer.step()


def avalanche_naive(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch: int, harness: bool, plugins: list | None = None,
    device: str | torch.device = "cpu",
) -> None:
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.templates import SupervisedTemplate

    from cl_harness.data.benchmark import make_benchmark

    task = EncodedTask("agnews", 0, inputs, labels, inputs[:1], labels[:1])
    (experience,) = list(make_benchmark([task]).train_stream)
    strategy = SupervisedTemplate(
        model=model, optimizer=adamw(model, harness), criterion=nn.CrossEntropyLoss(),
        train_mb_size=batch, train_epochs=1, device=device, evaluator=EvaluationPlugin(loggers=[]), plugins=plugins,
    )
    strategy.train(experience, num_workers=0)


def two_task_replay(
    model: nn.Module, inputs: torch.Tensor, labels: torch.Tensor, batch: int, harness: bool, device: str | torch.device = "cpu"
) -> None:
    """Two tasks (the two halves of the data) with replay; the second task's batches mix in the memory.

    ``harness``: the harness's registered replay strategy; otherwise Avalanche's ReplayPlugin as is.
    """
    from avalanche.training.plugins import ReplayPlugin

    from cl_harness.strategies import default_registry
    from cl_harness.strategies.registry import BuildContext

    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.templates import SupervisedTemplate

    from cl_harness.data.benchmark import make_benchmark

    half = len(labels) // 2
    if harness:
        info = default_registry().get("replay")
        (plugin,) = info.build(info.config_cls(mem_size=half), BuildContext("domain_incremental", 2, batch, batch))
    else:
        plugin = ReplayPlugin(mem_size=half, batch_size=batch, batch_size_mem=batch)
    tasks = [
        EncodedTask(f"part{i}", i, inputs[part], labels[part], inputs[:1], labels[:1])
        for i, part in enumerate((slice(0, half), slice(half, None)))
    ]
    strategy = SupervisedTemplate(
        model=model, optimizer=adamw(model, harness), criterion=nn.CrossEntropyLoss(),
        train_mb_size=batch, train_epochs=1, device=device, evaluator=EvaluationPlugin(loggers=[]), plugins=[plugin],
    )
    for experience in make_benchmark(tasks).train_stream:
        strategy.train(experience, num_workers=0)


def replay_peak_memory(data_root: Path, task_counts: tuple[int, ...], per_class: int, device: str = "cpu") -> dict[int, float]:
    """Peak memory (MiB, reset before each run) of class-incremental replay runs over the first k DBpedia 2-class tasks."""
    import tempfile

    import yaml

    from cl_harness.config.loader import load_experiment
    from cl_harness.grid.prepare import check_experiment, prepare_experiment
    from cl_harness.runner.run import train_and_evaluate

    repo = Path(__file__).resolve().parents[1]
    stream = yaml.safe_load((repo / "streams" / "local" / "dbpedia_7x2.yaml").read_text())
    peaks: dict[int, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        prepared_runs = {}
        for count in task_counts:  # prepare every stream first, so each run starts from the same process state
            folder = Path(tmp) / f"tasks{count}"
            folder.mkdir()
            tasks = [{**task, "train_per_class": per_class, "test_per_class": per_class // 2} for task in stream["tasks"][:count]]
            (folder / "stream.yaml").write_text(yaml.safe_dump({**stream, "tasks": tasks}))
            experiment = {
                "name": f"memory-{count}", "stream": "stream.yaml", "backbone": "bundled:all-MiniLM-L6-v2",
                "training": {"epochs": 1, "batch_size": 16, "eval_batch_size": 64, "lr": 5e-5, "max_length": 128, "device": device},
                "strategies": [{"replay": {"mem_size": 100, "policy": "class_balanced"}}], "seeds": [0],
            }
            (folder / "experiment.yaml").write_text(yaml.safe_dump(experiment))
            loaded = load_experiment(folder / "experiment.yaml", data_root=data_root)
            prepared_runs[count] = prepare_experiment(check_experiment(loaded), cache=None)
        for count, prepared in prepared_runs.items():
            result = train_and_evaluate(prepared.run_plan(prepared.runs[0]), show_progress=False)
            peaks[count] = result.metrics["peak_memory_mb"]
    return peaks


@torch.inference_mode()
def padded_eval(model: nn.Module, inputs: torch.Tensor, batch: int) -> None:
    model.eval()
    for start in range(0, len(inputs), batch):
        model(inputs[start : start + batch]).argmax(1)


def model_flops(config, lengths: torch.Tensor, passes: int) -> float:
    """FLOPs an encoder needs for texts of ``lengths`` real tokens: ``passes`` 1 for inference, 3 for training.

    Per layer and token, the linear maps (attention projections and feed-forward) take ``2 * (4 h^2 + 2 h f)``, the
    attention scores and weighted sum ``4 h l`` (Kaplan et al. 2020's count); padding is not counted (model-FLOP
    utilisation counts the work a text needs, so a padded loop scores lower for the same speed).
    """
    hidden, layers, inner = config.hidden_size, config.num_hidden_layers, config.intermediate_size
    lengths = lengths.double()
    per_token = 2 * (4 * hidden * hidden + 2 * hidden * inner)
    forward = layers * (per_token * lengths.sum() + 4 * hidden * (lengths * lengths).sum())
    return passes * float(forward)


def matmul_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 2048, repeats: int = 8) -> float:
    """FLOP/s of the best of three runs of square matrix products: the practical peak of these cores (or this GPU)."""
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    a @ b  # warm-up
    best = min(timed(lambda: [a @ b for _ in range(repeats)]) for _ in range(3))
    return 2 * size**3 * repeats / best


def measure(variants: dict, rounds: int) -> dict[str, float]:
    """Seconds per variant: round-robin, best of ``rounds`` (load on a shared machine hits all variants alike)."""
    seconds: dict[str, float] = {}
    for _ in range(rounds):
        for name, (make, work) in variants.items():
            model = make()
            seconds[name] = min(seconds.get(name, float("inf")), timed(lambda: work(model)))  # noqa: B023 - called at once
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True, type=Path)
    parser.add_argument("--examples", type=int, default=192)
    parser.add_argument("--eval-examples", type=int, default=768)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--eval-batch-size", type=int, default=128)
    parser.add_argument("--memory-per-class", type=int, default=40, help="training examples per class in the memory runs")
    parser.add_argument("--rounds", type=int, default=2, help="measure every variant this many times, keep the best")
    parser.add_argument("--eval-rounds", type=int, default=5, help="rounds for the evaluation, which is cheap and noisier")
    parser.add_argument("--skip-training", action="store_true", help="skip the training and replay throughput")
    parser.add_argument("--skip-memory", action="store_true", help="skip the 5-task vs 2-task memory runs")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--precision", choices=["fp32", "bf16", "fp16"], default="fp32")
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
    device = torch.device(args.device)
    dev_x, dev_y = train_x.to(device), train_y.to(device)  # the plain loops' tensors; Avalanche moves its minibatches itself

    def fresh_padded() -> nn.Module:
        return PaddedClassifier(load_encoder(config), 4).to(device)

    def fresh_harness(precision: str = args.precision) -> nn.Module:
        torch.manual_seed(0)  # the same head for every precision
        return TextClassifier(load_encoder(config), [4], "domain_incremental", precision=precision).to(device)

    with_bf16 = args.precision == "fp32"  # time the bf16 lever beside the fp32 variants

    def amp(work):
        """A baseline's work under the autocast a user would add for ``--precision``."""
        def wrapped(model):
            with autocast(device, args.precision):
                return work(model)
        return wrapped

    def harness_plugins(extra: list) -> list:
        return extra + [LossScaling(DynamicLossScale())] if args.precision == "fp16" else extra

    with autocast(device, args.precision):
        plain_loop(fresh_padded(), dev_x[:32], dev_y[:32], args.batch_size, False)  # warm-up
    if not args.skip_training:
        seconds = measure(
            {
                "(a) plain loop, padded": (fresh_padded, amp(lambda m: plain_loop(m, dev_x, dev_y, args.batch_size, False))),
                "(b) plain loop, dynamic padding": (fresh_padded, amp(lambda m: plain_loop(m, dev_x, dev_y, args.batch_size, True))),
                "(c) Avalanche Naive, padded": (
                    fresh_padded, amp(lambda m: avalanche_naive(m, train_x, train_y, args.batch_size, False, device=device))
                ),
                "(d) cl-harness naive": (
                    fresh_harness,
                    lambda m: avalanche_naive(m, train_x, train_y, args.batch_size, True, harness_plugins([]), device=device),
                ),
                "(e) cl-harness naive, bucketing": (
                    fresh_harness,
                    lambda m: avalanche_naive(m, train_x, train_y, args.batch_size, True, harness_plugins([LengthBucketing()]), device=device),
                ),
                "(f) plain loop, dynamic, fused AdamW": (
                    fresh_padded, amp(lambda m: plain_loop(m, dev_x, dev_y, args.batch_size, True, fused=True))
                ),
                **({"(g) cl-harness naive, bf16": (
                    lambda: fresh_harness("bf16"),
                    lambda m: avalanche_naive(m, train_x, train_y, args.batch_size, True, [], device=device),
                )} if with_bf16 else {}),
            },
            args.rounds,
        )
        print(f"\ntraining ({args.examples} examples, batch {args.batch_size}):")
        base = args.examples / seconds["(c) Avalanche Naive, padded"]
        best = args.examples / seconds["(b) plain loop, dynamic padding"]
        for name, s in seconds.items():
            rate = args.examples / s
            print(f"  {name:<34} {rate:6.1f} ex/s   x{rate / base:4.2f} vs (c)   x{rate / best:4.2f} vs (b)")
        peak = matmul_peak_flops(device)
        encoder_config = load_model_config(config)
        needed = model_flops(encoder_config, train_x[:, 1].sum(1), passes=3)
        padded = model_flops(encoder_config, torch.full((len(train_x),), args.max_length), passes=3)
        print(f"  model FLOPs utilisation (the {needed / 1e9:.0f} GFLOP the texts need, padding not counted, against the "
              f"{peak / 1e9:.0f} GFLOP/s of an fp32 {2048}x{2048} matmul here; padded to {args.max_length} they take "
              f"{padded / 1e9:.0f} GFLOP, x{padded / needed:.2f}: the most that cutting padding can give):")
        for name in ("(c) Avalanche Naive, padded", "(d) cl-harness naive", "(g) cl-harness naive, bf16"):
            if name in seconds:
                print(f"    {name:<32} {needed / seconds[name] / 1e9:6.1f} GFLOP/s = {100 * needed / seconds[name] / peak:4.1f}% of that peak")

        replay = measure(
            {
                "Avalanche replay, padded": (
                    fresh_padded, amp(lambda m: two_task_replay(m, train_x, train_y, args.batch_size, False, device))
                ),
                "cl-harness replay, no bucketing": (
                    fresh_harness, lambda m: two_task_replay(m, train_x, train_y, args.batch_size, True, device)
                ),
            },
            args.rounds,
        )
        padded_s, harness_s = replay.values()
        examples = args.examples + args.examples // 2  # the second task's batches carry as many memory examples again
        print(f"\nreplay (2 tasks of {args.examples // 2} examples, memory {args.examples // 2}, batch {args.batch_size} + {args.batch_size}):")
        print(f"  Avalanche replay, padded           {examples / padded_s:6.1f} ex/s")
        print(f"  cl-harness replay, no bucketing    {examples / harness_s:6.1f} ex/s   x{padded_s / harness_s:4.2f}")

    eval_x, eval_y = inputs[: args.eval_examples].to(device), targets[: args.eval_examples].to(device)
    padded_model, harness_model = fresh_padded(), fresh_harness()
    bf16_model = fresh_harness("bf16") if with_bf16 else None
    eager_model = fresh_harness()
    eager_model.scoring = nullcontext  # the same evaluator without the fused scoring path: what that path gives

    def harness_eval(model):
        return Evaluator([EncodedTask("eval", 0, eval_x, eval_y, eval_x, eval_y)], default_kinds(),
                         KindEnv(device, args.batch_size, args.eval_batch_size))(model, 0)

    evaluation = measure(
        {
            "padded": (lambda: padded_model, amp(lambda m: padded_eval(m, eval_x, args.eval_batch_size))),
            "harness": (lambda: harness_model, harness_eval),
            "harness eager": (lambda: eager_model, harness_eval),
            **({"harness bf16": (lambda: bf16_model, harness_eval)} if with_bf16 else {}),
        },
        args.eval_rounds,
    )
    padded_s, harness_s = evaluation["padded"], evaluation["harness"]
    eval_lengths = eval_x[:, 1].sum(1).cpu()
    encoder_config = harness_model.encoder.config
    eval_needed = model_flops(encoder_config, eval_lengths, passes=1)
    eval_padded = model_flops(encoder_config, torch.full((len(eval_lengths),), args.max_length), passes=1)
    print(f"\nevaluation ({args.eval_examples} examples, batch {args.eval_batch_size}; padded to {args.max_length} they take "
          f"x{eval_padded / eval_needed:.2f} the FLOPs they need):")
    print(f"  padded inference loop              {args.eval_examples / padded_s:6.1f} ex/s")
    print(f"  cl-harness evaluator               {args.eval_examples / harness_s:6.1f} ex/s   x{padded_s / harness_s:4.2f}")
    eager_s = evaluation["harness eager"]
    print(f"  cl-harness evaluator, no fusion    {args.eval_examples / eager_s:6.1f} ex/s   x{padded_s / eager_s:4.2f}"
          "   (the scoring fast path off: models/fused_inference.py)")
    if with_bf16:
        bf16_s = evaluation["harness bf16"]
        print(f"  cl-harness evaluator, bf16         {args.eval_examples / bf16_s:6.1f} ex/s   x{padded_s / bf16_s:4.2f}")

    if not args.skip_memory:
        peaks = replay_peak_memory(args.data_root, (2, 5), args.memory_per_class, args.device)
        print(f"\npeak memory, class-incremental replay (DBpedia, 2 classes a task, {args.memory_per_class} per class, memory 100):")
        for count, peak in peaks.items():
            print(f"  {count} tasks                            {peak:7.0f} MiB   x{peak / peaks[2]:4.2f}")
    gpu = f", GPU {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {torch.get_num_threads()} threads{gpu}")
    print(f"device {device}, precision {args.precision}")


if __name__ == "__main__":
    main()
