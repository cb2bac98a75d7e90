"""The token cache: a second encoding of the same texts reads the disk, anything that changes the tokens misses."""

from __future__ import annotations

import torch

from cl_harness.data.encoding import encode_texts
from cl_harness.data.token_cache import TokenCache, tokenizer_fingerprint
from conftest import write_demo_stream, write_experiment


def _tokenizer(tiny_bert):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_bert)


class CountingEncoder:
    """``encode_texts`` that counts its calls."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.calls = 0

    def __call__(self, texts, max_length):
        self.calls += 1
        return encode_texts(self.tokenizer, texts, max_length)


TEXTS = ["the match ended in a draw", "bake the bread for an hour", ("a first text", "and its pair")]


def test_the_second_encoding_reads_the_cache(tmp_path, tiny_bert):
    tokenizer = _tokenizer(tiny_bert)
    encoder = CountingEncoder(tokenizer)
    first = TokenCache(tmp_path, tokenizer).encode(TEXTS, 16, encoder)
    again = TokenCache(tmp_path, tokenizer)  # a new invocation: only the disk is shared
    second = again.encode(TEXTS, 16, encoder)
    assert encoder.calls == 1 and (again.hits, again.misses) == (1, 0)
    assert torch.equal(first, second) and second.shape == (3, 3, 16)


def test_other_texts_max_length_or_tokenizer_miss(tmp_path, tiny_bert):
    tokenizer = _tokenizer(tiny_bert)
    encoder = CountingEncoder(tokenizer)
    cache = TokenCache(tmp_path, tokenizer)
    cache.encode(TEXTS, 16, encoder)
    cache.encode(TEXTS[:2], 16, encoder)
    cache.encode(TEXTS, 20, encoder)
    assert encoder.calls == 3 and cache.hits == 0
    tokenizer.add_tokens(["brandnewword"])
    assert TokenCache(tmp_path, tokenizer).tokenizer_id != cache.tokenizer_id
    assert tokenizer_fingerprint(tokenizer) != tokenizer_fingerprint(_tokenizer(tiny_bert))


def test_a_damaged_cache_file_is_encoded_again(tmp_path, tiny_bert):
    tokenizer = _tokenizer(tiny_bert)
    encoder = CountingEncoder(tokenizer)
    expected = TokenCache(tmp_path, tokenizer).encode(TEXTS, 16, encoder)
    (cached,) = tmp_path.glob("*.pt")
    cached.write_bytes(b"not a tensor")
    cache = TokenCache(tmp_path, tokenizer)
    assert torch.equal(cache.encode(TEXTS, 16, encoder), expected)
    assert encoder.calls == 2 and cache.misses == 1
    assert torch.equal(torch.load(cached, weights_only=True), expected), "the damaged file was rewritten"


def test_the_environment_picks_or_disables_the_cache(tmp_path, tiny_bert):
    tokenizer = _tokenizer(tiny_bert)
    assert TokenCache.from_environment(tokenizer, {"CL_HARNESS_CACHE": "off"}) is None
    assert TokenCache.from_environment(tokenizer, {"CL_HARNESS_CACHE": str(tmp_path)}).root == tmp_path
    assert TokenCache.from_environment(tokenizer, {}).root.name == "tokens"


def test_a_second_prepare_of_an_experiment_tokenises_nothing(tmp_path, tiny_bert):
    from cl_harness.config.loader import load_experiment
    from cl_harness.grid.prepare import check_experiment, prepare_experiment

    write_demo_stream(tmp_path, tasks=2)
    path = write_experiment(tmp_path, tiny_bert, ["naive"])
    checked = check_experiment(load_experiment(path))
    first = prepare_experiment(checked, TokenCache(tmp_path / "cache", checked.tokenizer))
    second = prepare_experiment(checked, TokenCache(tmp_path / "cache", checked.tokenizer))
    assert (first.cache.hits, first.cache.misses) == (0, 4)  # 2 tasks x (train, test)
    assert (second.cache.hits, second.cache.misses) == (4, 0)
    for a, b in zip(first.encoded, second.encoded):
        assert torch.equal(a.train_inputs, b.train_inputs) and torch.equal(a.test_inputs, b.test_inputs)
    assert prepare_experiment(checked, None).cache is None
