"""The model group: which weights to load (a registered type, a hub id or directory, a checkpoint) and in what
dtype. A checkpoint's args.json fills the fields left unset (ms-swift's load_from_ckpt_dir)."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

from ..checkpoint import adapter_base_model, is_lora_dir, read_ckpt_args
from ..model import use_hf_default
from ..registry import get_model_meta
from .base import Arguments, check_choices

logger = logging.getLogger("swiftcli")

DTYPES = ("AUTO", "bf16", "fp16", "fp32")
RESTORED_FIELDS = ("model_type", "model_id_or_path", "model_revision", "template_type", "system", "dtype")
"""What a checkpoint's args.json restores when the user left it unset (the template's fields included)."""


@dataclass
class ModelArguments(Arguments):
    model_type: str | None = None
    """Registered model type, e.g. qwen-7b-chat (see `swift list-models`). Default: smollm2-135m-instruct, embedded."""
    model_id_or_path: str | None = None
    """Hub id or local directory. Without --model_type the architecture and template are detected from its files."""
    model_revision: str | None = None
    """Hub revision (branch, tag or commit)."""
    ckpt_dir: str | None = None
    """A checkpoint made by sft or export: full weights, or a LoRA adapter (served as `default-lora`)."""
    dtype: str = "AUTO"
    """AUTO, bf16, fp16 or fp32. AUTO (vLLM's rule): bf16 (fp16 if unsupported) on GPU; on CPU bf16 where it has
    bf16 instructions (AVX512-BF16 or AMX), else fp32; training on CPU: fp32."""
    use_hf: bool | None = None
    """Download from Hugging Face instead of ModelScope (also env USE_HF=1)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.use_hf is None:
            self.use_hf = use_hf_default()
        if self.ckpt_dir:
            self.restore_from_ckpt()
        check_choices(self, {"dtype": DTYPES})
        if self.model_type:
            get_model_meta(self.model_type)

    def restore_from_ckpt(self) -> None:
        self.ckpt_dir = os.path.abspath(os.path.expanduser(self.ckpt_dir))
        saved = read_ckpt_args(self.ckpt_dir)
        if not saved:
            logger.warning("%s has no args.json: pass --model_type/--template_type if detection is wrong",
                           self.ckpt_dir)
        for name in RESTORED_FIELDS:
            if name in saved and getattr(self, name, "") in (None, "AUTO"):
                setattr(self, name, saved[name])
        if self.is_lora_ckpt:
            if not self.model_type and not self.model_id_or_path:
                self.model_id_or_path = adapter_base_model(self.ckpt_dir)
        else:  # full or merged weights: the checkpoint itself is the model
            self.model_id_or_path = self.ckpt_dir

    @property
    def is_lora_ckpt(self) -> bool:
        return bool(self.ckpt_dir) and is_lora_dir(self.ckpt_dir)


@dataclass
class TemplateArguments(Arguments):
    template_type: str = "AUTO"
    """Chat template; AUTO takes the model's registered one ('auto' = the tokenizer's own chat_template)."""
    system: str | None = None
    """System prompt; default: the template's. Pass '' for none."""
    max_length: int = -1
    """Longest prompt in tokens (-1: the model's context)."""
    truncation_strategy: str = "delete"
    """Prompt over max_length: 'delete' (refuse it) or 'truncation_left' (drop the oldest tokens)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choices(self, {"truncation_strategy": ("delete", "truncation_left")})

