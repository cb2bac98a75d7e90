"""The scenario heads and the packed-tensor wrapper around a Hugging Face encoder."""

from __future__ import annotations

import pytest
import torch

from cl_harness.config.experiment import BackboneConfig
from cl_harness.errors import ConfigError
from cl_harness.models.backbone import check_tokenizer_matches, load_encoder, load_model_config, load_tokenizer
from cl_harness.models.classifier import MASKED_LOGIT, TextClassifier, trim_batch


class FakeExperience:
    def __init__(self, classes):
        class Targets:
            uniques = set(classes)

        class Dataset:
            targets = Targets()

        self.dataset = Dataset()


def packed(lengths: list[int], width: int = 12) -> torch.Tensor:
    x = torch.zeros((len(lengths), 3, width), dtype=torch.long)
    for row, n in enumerate(lengths):
        x[row, 0, :n] = torch.randint(5, 20, (n,))
        x[row, 1, :n] = 1
    return x  # (batch, 3, width)


def test_trim_batch_cuts_shared_padding_only():
    x = packed([3, 7, 5])
    trimmed = trim_batch(x)
    assert trimmed.shape == (3, 3, 7)
    assert torch.equal(trimmed, x[:, :, :7])


@pytest.fixture
def encoder(tiny_bert):
    return load_encoder(BackboneConfig(name=str(tiny_bert)))


def test_padding_does_not_change_the_pooled_features(encoder):
    model = TextClassifier(encoder, [4], "domain_incremental").eval()
    short = packed([4, 6], width=6)
    long = torch.cat([short, torch.zeros((2, 3, 10), dtype=torch.long)], dim=2)  # extra padding columns
    with torch.no_grad():
        assert torch.allclose(model(short), model(long), atol=1e-5)


def test_class_incremental_head_activates_classes_as_they_are_seen(encoder):
    model = TextClassifier(encoder, [6], "class_incremental")
    x = packed([5, 5])
    assert not model.can_predict(torch.tensor([0, 1]))
    assert torch.all(model(x) == MASKED_LOGIT)
    model.train()
    model.adaptation(FakeExperience([0, 1]))
    logits = model(x)
    assert torch.all(logits[:, 2:] == MASKED_LOGIT) and torch.all(logits[:, :2] != MASKED_LOGIT)
    model.adaptation(FakeExperience([2, 3]))
    assert model.seen_units.tolist() == [True, True, True, True, False, False]
    assert model.can_predict(torch.tensor([3, 4])) and not model.can_predict(torch.tensor([4, 5]))
    model.eval()
    model.adaptation(FakeExperience([4, 5]))  # evaluation never activates units
    assert model.seen_units.sum() == 4


def test_task_incremental_rows_use_their_task_head(encoder):
    model = TextClassifier(encoder, [2, 3], "task_incremental").eval()
    x = packed([4, 4, 6])
    with torch.no_grad():
        logits = model(x, torch.tensor([0, 1, 0]))
        assert logits.shape == (3, 3)
        assert logits[0, 2] == MASKED_LOGIT and logits[2, 2] == MASKED_LOGIT and logits[1, 2] != MASKED_LOGIT
        features = model.encode(x)
        assert torch.allclose(logits[1], model.heads[1](features[1]), atol=1e-5)
        assert torch.allclose(logits[0, :2], model.heads[0](features[0]), atol=1e-5)
    with pytest.raises(ValueError, match="task label"):
        model(x)


def test_bundled_minilm_resolves_and_matches_its_tokenizer():
    config = BackboneConfig()
    tokenizer, encoder = load_tokenizer(config), load_encoder(config)
    check_tokenizer_matches(tokenizer, load_model_config(config), config.name)
    assert sum(p.numel() for p in encoder.parameters()) == 22_713_216


def test_a_directory_that_is_not_a_model_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ConfigError, match="cannot load backbone") as info:
        load_encoder(BackboneConfig(name=str(tmp_path)))
    assert info.value.key == "backbone.name"


def test_a_tokenizer_larger_than_the_embedding_table_is_refused(tiny_bert):
    tiny_config = load_model_config(BackboneConfig(name=str(tiny_bert)))
    minilm_tokenizer = load_tokenizer(BackboneConfig())
    with pytest.raises(ConfigError, match="tokenizer"):
        check_tokenizer_matches(minilm_tokenizer, tiny_config, "tiny")


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_half_precision_runs_the_encoder_in_half_and_returns_float32_logits(encoder, precision, dtype):
    full = TextClassifier(encoder, [4], "domain_incremental").eval()
    half = TextClassifier(encoder, [4], "domain_incremental", precision=precision).eval()
    half.heads = full.heads  # the same weights throughout: only the precision differs
    seen = []
    linear = next(m for m in encoder.modules() if isinstance(m, torch.nn.Linear))  # layer norms stay float32 under autocast
    handle = linear.register_forward_hook(lambda module, args, output: seen.append(output.dtype))
    try:
        x = packed([5, 9])
        reference, logits = full(x), half(x)
    finally:
        handle.remove()
    assert seen == [torch.float32, dtype]
    assert logits.dtype == torch.float32 and torch.isfinite(logits).all()
    assert torch.allclose(logits, reference, atol=0.1), "half precision rounds, it does not change the model"


def test_the_evaluator_scores_unseen_class_incremental_tasks_zero_without_running_the_model(encoder):
    from cl_harness.data.benchmark import EncodedTask
    from cl_harness.evaluation.evaluator import Evaluator
    from cl_harness.tasks import default_kinds
    from cl_harness.tasks.registry import KindEnv

    model = TextClassifier(encoder, [4], "class_incremental")
    model.train()
    model.adaptation(FakeExperience([0, 1]))
    calls = []
    handle = model.encoder.register_forward_hook(lambda module, args, output: calls.append(1))
    try:
        x = packed([6, 6, 6, 6])  # one length: one evaluation batch
        seen = EncodedTask("seen", 0, x, torch.tensor([0, 1, 0, 1]), x, torch.tensor([0, 1, 0, 1]))
        unseen = EncodedTask("unseen", 1, x, torch.tensor([2, 3, 2, 3]), x, torch.tensor([2, 3, 2, 3]))
        env = KindEnv(torch.device("cpu"), batch_size=8, eval_batch_size=8)
        scores = Evaluator([seen, unseen], default_kinds(), env)(model, 0)
    finally:
        handle.remove()
    assert scores[1] == 0.0 and 0.0 <= scores[0] <= 1.0
    assert len(calls) == 1, "one batch for the seen task, none for the unseen one"


def test_a_training_batch_runs_in_length_sorted_chunks_with_the_same_features(encoder):
    model = TextClassifier(encoder, [4], "domain_incremental").eval()  # eval: no dropout, so rows compare exactly
    lengths = [9, 120, 7, 10, 118, 8, 10, 9, 120, 6, 119, 10, 8, 9, 7, 10]  # 4 long rows among 12 short ones
    x = packed(lengths, width=128)  # (16, 3, 128)
    whole = model.encode(x, chunked=False)
    widths = []
    handle = encoder.register_forward_hook(lambda module, args, kwargs, output: widths.append(kwargs["input_ids"].shape), with_kwargs=True)
    try:
        model.train()
        encoder.eval()  # the chunking follows the classifier's mode; dropout stays off for the comparison
        chunked = model.encode(x)
    finally:
        handle.remove()
    assert torch.allclose(chunked, whole, atol=1e-5), "chunks give each row the features it has in the whole batch"
    assert [tuple(shape) for shape in widths] == [(4, 120), (12, 10)], "long and short rows run apart, each trimmed"
