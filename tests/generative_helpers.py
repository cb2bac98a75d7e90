"""Tiny generative backbones for tests: a random Llama and a random T5 with a word-level tokenizer built here."""

from __future__ import annotations

from pathlib import Path

import yaml

from conftest import write_demo_stream, write_experiment

from cl_harness.testing import build_tiny_llama, build_tiny_t5, word_tokenizer  # noqa: F401 (one copy, public)

def write_generative_experiment(directory: Path, backbone: Path | str, kind: str, strategies: list, tasks: int = 3,
                                per_class: int = 20, instruction: dict | None = None, scenario: str = "class_incremental",
                                **training) -> Path:
    """A stream of ``tasks`` two-topic demo tasks and an experiment on a generative backbone, in ``directory``."""
    stream_path = write_demo_stream(directory, scenario, per_class, tasks)
    stream = yaml.safe_load(stream_path.read_text())
    for task in stream["tasks"]:
        task.update({"instruction": instruction} if instruction else {})
    stream_path.write_text(yaml.safe_dump(stream, sort_keys=False))
    training = {"device": "cpu", **training}
    return write_experiment(directory, backbone, strategies, name="tiny-generative", backbone_fields={"kind": kind}, **training)


def run_generative(path: Path, keep: bool = True, folder: Path | None = None):
    """Check, tokenise and run the first planned run of an experiment file; ``(result, run)`` with ``keep``.

    ``run`` is the one TrainingRun every backbone kind trains through: ``run.model``, ``run.plugins``, ``run.strategy``.
    """
    from cl_harness.config.loader import load_experiment
    from cl_harness.grid.prepare import check_experiment, prepare_experiment
    from cl_harness.runner.run import TrainingRun

    prepared = prepare_experiment(check_experiment(load_experiment(path)))
    plan = prepared.run_plan(prepared.runs[0])
    run = TrainingRun(plan, show_progress=False, folder=folder)
    result = run.execute()
    return (result, run) if keep else result
