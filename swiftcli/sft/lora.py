"""The model `swift sft` trains: a peft LoRA on the layers --lora_target_modules names (DEFAULT: the attention's
input projections by this model's own module names), or the whole model for full fine-tuning."""
from __future__ import annotations

import logging
from typing import Any

from ..arguments import SftArguments
from ..errors import ArgumentError

logger = logging.getLogger("swiftcli")

ATTENTION_OUTPUTS = ("o_proj", "out_proj", "c_proj", "dense", "wo")
"""Attention output projections: not in DEFAULT (ms-swift's per-architecture defaults are the q/k/v inputs)."""


def _is_linear(module: Any) -> bool:
    import torch

    return isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Conv1D", "QuantLinear")


def linear_names(model: Any) -> list[str]:
    """The distinct names of the model's linear layers (what --lora_target_modules can name), in model order."""
    names: dict[str, None] = {}
    for name, module in model.named_modules():
        if _is_linear(module) and name:
            names[name.rsplit(".", 1)[-1]] = None
    return list(names)


def default_lora_targets(model: Any) -> list[str]:
    """DEFAULT, as ms-swift means it: the attention's input projections, by the names this model really has
    (q_proj k_proj v_proj; Phi-3's fused qkv_proj; Qwen-1's c_attn; ChatGLM's query_key_value)."""
    names: dict[str, None] = {}
    for name, module in model.named_modules():
        parent, _, leaf = name.rpartition(".")
        in_attention = any(part in parent.rsplit(".", 1)[-1].lower() for part in ("attn", "attention"))
        if in_attention and _is_linear(module) and leaf not in ATTENTION_OUTPUTS:
            names[leaf] = None
    return list(names)


def lora_targets(names: list[str], model: Any) -> str | list[str]:
    """--lora_target_modules for peft: DEFAULT -> the attention projections found in `model`, ALL -> 'all-linear'."""
    if names == ["DEFAULT"]:
        found = default_lora_targets(model)
        if not found:
            raise ArgumentError(f"--lora_target_modules DEFAULT: no attention projection found by name in "
                                f"{type(model).__name__}; pass ALL or some of its linear layers: "
                                f"{' '.join(linear_names(model))}")
        return found
    if names == ["ALL"]:
        return "all-linear"
    return names


def prepare_model(model: Any, args: SftArguments) -> Any:
    """A peft LoRA around the model (its own weights frozen), or the model itself for full fine-tuning."""
    model.config.use_cache = False  # no KV cache while training
    if args.sft_type == "lora":
        from peft import LoraConfig, get_peft_model

        targets = lora_targets(args.lora_target_modules, model)
        logger.info("LoRA target modules: %s", targets if isinstance(targets, str) else " ".join(targets))
        config = LoraConfig(task_type="CAUSAL_LM", r=args.lora_rank, lora_alpha=args.lora_alpha,
                            lora_dropout=args.lora_dropout, target_modules=targets)
        try:
            model = get_peft_model(model, config)
        except ValueError as e:  # peft: "Target modules {...} not found in the base model"
            raise ArgumentError(f"--lora_target_modules {' '.join(args.lora_target_modules)}: "
                                f"{str(e).strip().splitlines()[0]} (this model's linear layers: "
                                f"{' '.join(linear_names(model))}; or DEFAULT, ALL)") from None
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    logger.info("Trainable parameters: %s of %s (%.2f%%)", f"{trainable:,}", f"{total:,}", 100 * trainable / total)
    return model
