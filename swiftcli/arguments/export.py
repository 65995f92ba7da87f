"""`swift export`'s arguments: a model or LoRA checkpoint in, merged / peft-format / quantized weights out."""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import ArgumentError
from .dataset import DatasetArguments
from .model import ModelArguments, TemplateArguments

QUANT_METHODS = ("bnb", "gptq", "awq")


@dataclass
class ExportArguments(DatasetArguments, TemplateArguments, ModelArguments):
    merge_lora: bool = False
    """Merge the --ckpt_dir LoRA into its base model: full weights in <ckpt_dir>-merged that infer, deploy and vLLM
    load directly."""
    to_peft_format: bool = False
    """Convert an ms-swift LoRA checkpoint (adapter in default/) into a standard peft adapter in <ckpt_dir>-peft."""
    quant_bits: int = 0
    """Quantize to 4 or 8 bits (0: don't). With --merge_lora true: merge first, then quantize."""
    quant_method: str = "bnb"
    """bnb (bitsandbytes, runs on CPU), gptq (auto-round; slow on CPU) or awq (needs a CUDA GPU). ms-swift 2.x
    defaulted to awq."""
    quant_n_samples: int = 256
    """gptq: calibration blocks of --quant_seqlen tokens (from --dataset, else the built-in calibration set)."""
    quant_seqlen: int = 2048
    """gptq: tokens per calibration block."""
    quant_batch_size: int = 1
    """gptq: calibration blocks per forward pass."""
    quant_group_size: int | None = None
    """gptq: weights sharing one scale (default: the largest of 128, 64, 32 that divides every layer's input size,
    which vLLM requires)."""
    quant_iters: int | None = None
    """gptq/awq: auto-round tuning steps per layer block (default: auto-round's 200; hours on CPU for a 7B model).
    0: plain round-to-nearest, no tuning (seconds)."""
    output_dir: str | None = None
    """Where to write (default: <ckpt_dir>-merged, <ckpt_dir>-peft, or <ckpt_dir or model_type>-<method>-int<bits>)."""
    overwrite: bool = False
    """Replace an existing output directory instead of stopping with an error."""
    max_shard_size: str = "5GB"
    """Largest safetensors file of written weights, e.g. 5GB or 200MB."""
    dtype: str = "AUTO"
    """AUTO, bf16, fp16 or fp32: the dtype of the written weights. AUTO keeps the checkpoint's own (args.json's, else
    config.json's)."""
    seed: int = 42
    """Random seed of calibration sampling and quantization tuning."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self._validate_export()
        if self.output_dir is None:
            self.output_dir = self._default_output_dir()
        self.output_dir = os.path.abspath(os.path.expanduser(self.output_dir)) if self.output_dir else None
        self._check_output_dir()

    @property
    def is_msswift_lora_ckpt(self) -> bool:
        """ms-swift's own LoRA layout (tuner_backend swift): the adapter sits in default/, not in the checkpoint."""
        return bool(self.ckpt_dir) and os.path.isfile(os.path.join(self.ckpt_dir, "default", "adapter_config.json"))

    def _validate_export(self) -> None:
        if not (self.merge_lora or self.to_peft_format or self.quant_bits):
            raise ArgumentError("nothing to export: pass --merge_lora true, --to_peft_format true or --quant_bits 4|8")
        if self.quant_bits not in (0, 4, 8):
            raise ArgumentError(f"--quant_bits must be 0, 4 or 8, got {self.quant_bits}")
        if self.quant_method not in QUANT_METHODS:
            raise ArgumentError(f"--quant_method must be one of {', '.join(QUANT_METHODS)}, got {self.quant_method!r}")
        for name in ("quant_n_samples", "quant_seqlen", "quant_batch_size"):
            if getattr(self, name) < 1:
                raise ArgumentError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.quant_iters is not None and self.quant_iters < 0:
            raise ArgumentError(f"--quant_iters must be >= 0, got {self.quant_iters}")
        if self.quant_group_size is not None and self.quant_group_size not in (32, 64, 128):
            raise ArgumentError(f"--quant_group_size must be 32, 64 or 128, got {self.quant_group_size}")
        if self.to_peft_format:
            self._validate_to_peft_format()
        elif self.merge_lora:
            self._validate_merge_lora()
        elif self.ckpt_dir and (self.is_lora_ckpt or self.is_msswift_lora_ckpt):
            raise ArgumentError(f"{self.ckpt_dir} is a LoRA adapter: add --merge_lora true to merge it into its "
                                "base model, then quantize")
        if self.quant_bits:
            self._check_quant_backend()

    def _validate_to_peft_format(self) -> None:
        if self.merge_lora or self.quant_bits:
            raise ArgumentError("--to_peft_format runs on its own: convert first, then merge or quantize "
                                "<ckpt_dir>-peft in a second `swift export`")
        if not self.ckpt_dir:
            raise ArgumentError("--to_peft_format needs --ckpt_dir, an ms-swift LoRA checkpoint")
        if not (self.is_lora_ckpt or self.is_msswift_lora_ckpt):
            raise ArgumentError(f"{self.ckpt_dir} is not a LoRA checkpoint: neither adapter_config.json nor "
                                "default/adapter_config.json is there")

    def _validate_merge_lora(self) -> None:
        if not self.ckpt_dir:
            raise ArgumentError("--merge_lora needs --ckpt_dir, a LoRA checkpoint")
        if self.is_msswift_lora_ckpt:
            raise ArgumentError(f"{self.ckpt_dir} is in ms-swift's LoRA format: convert it with `swift export "
                                f"--ckpt_dir {self.ckpt_dir} --to_peft_format true`, then merge {self.ckpt_dir}-peft")
        if not self.is_lora_ckpt:
            raise ArgumentError(f"--merge_lora: {self.ckpt_dir} holds full weights (no adapter_config.json), "
                                "there is no LoRA to merge")
        if not any(os.path.isfile(os.path.join(self.ckpt_dir, name))
                   for name in ("adapter_model.safetensors", "adapter_model.bin")):
            raise ArgumentError(f"{self.ckpt_dir} has adapter_config.json but no adapter_model.safetensors (or "
                                ".bin): the adapter weights are missing")

    def _check_quant_backend(self) -> None:
        """Fail before loading anything when the chosen method can't run here."""
        import importlib.util

        from ..model import default_device

        if self.quant_method == "awq" and default_device() != "cuda":
            raise ArgumentError("--quant_method awq needs a CUDA GPU; on CPU use --quant_method bnb or gptq")
        if self.quant_method == "awq" and self.quant_bits != 4:
            raise ArgumentError("--quant_method awq quantizes to 4 bits only: pass --quant_bits 4")
        package = {"bnb": "bitsandbytes", "gptq": "auto_round", "awq": "auto_round"}[self.quant_method]
        if importlib.util.find_spec(package) is None:
            raise ArgumentError(f"--quant_method {self.quant_method} needs {package}: "
                                f"pip install {package.replace('_', '-')}")

    def _default_output_dir(self) -> str | None:
        """ms-swift's names, beside the input: -peft, -merged, -<method>-int<bits> (a model_type: in the cwd)."""
        if self.to_peft_format:
            return f"{self.ckpt_dir}-peft" if self.is_msswift_lora_ckpt else None  # already peft: nothing to write
        suffix = f"-{self.quant_method}-int{self.quant_bits}" if self.quant_bits else "-merged"
        if self.ckpt_dir:
            return self.ckpt_dir + suffix
        from ..registry import DEFAULT_MODEL_TYPE

        if self.model_type or not self.model_id_or_path:
            return (self.model_type or DEFAULT_MODEL_TYPE) + suffix
        return os.path.basename(os.path.normpath(self.model_id_or_path)) + suffix

    def _check_output_dir(self) -> None:
        if self.output_dir is None:
            return
        sources = [os.path.realpath(p) for p in (self.ckpt_dir, self.model_id_or_path) if p and os.path.exists(p)]
        if os.path.realpath(self.output_dir) in sources:
            raise ArgumentError(f"--output_dir {self.output_dir} is the model being exported: choose another directory")
        if os.path.exists(self.output_dir) and not self.overwrite:
            raise ArgumentError(f"output directory {self.output_dir} already exists: pass --overwrite true to "
                                "replace it, or choose another --output_dir")
