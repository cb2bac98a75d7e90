"""Encoder heads initialised from the label names: each class's row is the backbone's embedding of its name.

With a sentence-embedding backbone (MiniLM) the untrained model then ranks classes by the similarity
of the text to the label name, a real zero-shot baseline (b_j) rather than chance. Close to the
label-embedding zero-shot classifiers of Yin et al. 2019, "Benchmarking Zero-shot Text Classification"
(EMNLP), and to initialising new class weights from embeddings (Qi et al. 2018, "Low-Shot Learning with
Imprinted Weights", CVPR).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cl_harness.data.benchmark import LabelSpace
from cl_harness.data.encoding import encode_texts


def readable(name: str) -> str:
    """A label name as words: ``sci_tech`` -> ``sci tech``."""
    return name.replace("_", " ").replace("-", " ").strip()


@torch.no_grad()
def init_heads_from_label_names(model, tokenizer, space: LabelSpace, max_length: int) -> None:
    """Set every head row to the unit-normalised pooled embedding of its label name, bias 0; activate every unit.

    In a class-incremental head all units become active from the start: each row already means its class.
    """
    groups = space.task_labels if space.scenario == "task_incremental" else [space.shared]
    was_training = model.training
    model.eval()
    for head, names in zip(model.heads, groups):
        inputs = encode_texts(tokenizer, [readable(n) for n in names], max_length)  # (classes, 3, length)
        features = model.encode(inputs.to(head.weight.device), chunked=False)  # (classes, hidden)
        head.weight[: len(names)] = F.normalize(features, dim=-1)
        head.bias.zero_()
    model.seen_units.fill_(True)
    model.train(was_training)
