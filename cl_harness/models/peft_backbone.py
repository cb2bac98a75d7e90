"""Parameter-efficient backbones: LoRA and prompt tuning through the ``peft`` library, BitFit by freezing.

LoRA: Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models" (ICLR).
Prompt tuning: Lester et al. 2021, "The Power of Scale for Parameter-Efficient Prompt Tuning" (EMNLP).
BitFit: Ben Zaken et al. 2022, "BitFit: Simple Parameter-efficient Fine-tuning for Transformer-based Masked Language-models" (ACL).
"""

from __future__ import annotations

from torch import nn

from cl_harness.config.experiment import PeftConfig
from cl_harness.errors import ConfigError


def freeze_all_but_biases(encoder: nn.Module) -> None:
    """BitFit: only the encoder's bias terms stay trainable."""
    for name, param in encoder.named_parameters():
        param.requires_grad_(name.endswith("bias"))


def wrap_encoder(encoder: nn.Module, config: PeftConfig) -> nn.Module:
    """The encoder with the configured PEFT method applied (``peft`` freezes the base weights itself)."""
    if config.method == "none":
        return encoder
    if config.method == "bitfit":
        freeze_all_but_biases(encoder)
        return encoder
    import peft

    if config.method == "lora":
        lora = peft.LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=list(config.target_modules),
            bias="none",
        )
        try:
            return peft.get_peft_model(encoder, lora)
        except ValueError as exc:  # no module matched target_modules
            raise ConfigError(
                f"peft cannot apply LoRA: {exc}",
                key="backbone.peft.target_modules",
                hint="name linear layers of the encoder, e.g. [query, value] for BERT-style models",
            ) from None
    if config.method == "prompt_tuning":
        prompt = peft.PromptTuningConfig(task_type="FEATURE_EXTRACTION", num_virtual_tokens=config.num_virtual_tokens)
        return peft.get_peft_model(encoder, prompt)
    raise ConfigError(f"unsupported peft method {config.method!r}", key="backbone.peft.method")


def apply_peft(model, config: PeftConfig) -> None:
    """Apply ``config`` to a TextClassifier's encoder in place; heads stay trainable."""
    model.encoder = wrap_encoder(model.encoder, config)
    if config.method == "prompt_tuning":
        model.virtual_tokens = config.num_virtual_tokens
        model._takes_token_types = False  # peft's prompt tuning ignores token types (and warns on every batch)
