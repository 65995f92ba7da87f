"""`--to_peft_format true`: ms-swift's own LoRA layout -> a standard peft adapter (PeftModel, vLLM's LoRARequest).

ms-swift 2.x with `--tuner_backend swift` saves each adapter in a sub-directory (`default/`) with a swift config
(`swift_type`, `lora_dtype`, ...) and weight names that carry the adapter name (`q_proj.lora_A.default.weight`).
The conversion follows ms-swift's `Swift.save_to_peft_format`: keys get peft's `base_model.model.` prefix and lose
the adapter name, the config becomes a peft `LoraConfig`, and `default/` moves up to the checkpoint's top level.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import shutil
from typing import Any

from ..arguments import ExportArguments
from ..errors import ArgumentError
from .output import progress_steps, staged_dir

logger = logging.getLogger("swiftcli")

EXTRA_STATE_DIR = "extra_states"
"""Where ms-swift keeps non-LoRA trained tensors, which a peft adapter can't hold."""
TRAINING_STATE = re.compile(r"^(optimizer\.pt|scheduler\.pt|rng_state.*\.pth|scaler\.pt)$")
"""Files that only resume training: left out of the converted adapter."""
_ADAPTER_PARTS = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B")


def to_peft_format(args: ExportArguments) -> str:
    """Convert args.ckpt_dir into args.output_dir; returns the peft adapter's directory."""
    if not args.is_msswift_lora_ckpt:
        logger.info("%s is already in peft format (adapter_config.json at its top level): nothing to convert",
                    args.ckpt_dir)
        return args.ckpt_dir
    ckpt_dir = args.ckpt_dir
    if os.path.exists(os.path.join(ckpt_dir, EXTRA_STATE_DIR)):
        raise ArgumentError(f"{ckpt_dir} has {EXTRA_STATE_DIR}/ (tensors trained beside the LoRA), which a peft "
                            "adapter can't hold: merge it with ms-swift instead")
    adapters = [name for name in sorted(os.listdir(ckpt_dir))
                if os.path.isfile(os.path.join(ckpt_dir, name, "adapter_config.json"))]
    base = base_model_of(ckpt_dir)
    with progress_steps() as step, step(f"Converting {ckpt_dir} to peft format"), \
            staged_dir(args.output_dir, args.overwrite) as tmp:
        for name in os.listdir(ckpt_dir):
            if os.path.isfile(os.path.join(ckpt_dir, name)) and not TRAINING_STATE.match(name):
                shutil.copy2(os.path.join(ckpt_dir, name), os.path.join(tmp, name))
        for name in adapters:  # peft's layout: the default adapter at the top, others in sub-directories
            convert_adapter(os.path.join(ckpt_dir, name), tmp if name == "default" else os.path.join(tmp, name),
                            name, base)
    logger.info("Converted to peft format: %s", args.output_dir)
    return args.output_dir


def base_model_of(ckpt_dir: str) -> str | None:
    """The base model ms-swift recorded: configuration.json's adapter_cfg, else sft_args.json."""
    for name, path in (("configuration.json", ("adapter_cfg", "model_id_or_path")),
                       ("sft_args.json", ("model_id_or_path",))):
        file = os.path.join(ckpt_dir, name)
        if os.path.isfile(file):
            with open(file, encoding="utf-8") as f:
                value: Any = json.load(f)
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if value:
                return value
    return None


def convert_adapter(src: str, dst: str, adapter_name: str, base_model: str | None) -> None:
    """One ms-swift adapter directory -> peft's adapter_config.json + adapter_model.safetensors in `dst`."""
    from safetensors.torch import save_file

    os.makedirs(dst, exist_ok=True)
    peft_config(src, base_model).save_pretrained(dst)
    state = load_adapter_weights(src)
    save_file({peft_key(key, adapter_name): value.contiguous() for key, value in state.items()},
              os.path.join(dst, "adapter_model.safetensors"), metadata={"format": "pt"})


def peft_config(src: str, base_model: str | None) -> Any:
    """ms-swift's LoRAConfig.to_peft_config: drop the swift-only fields, keep what peft's LoraConfig knows."""
    from peft import LoraConfig

    path = os.path.join(src, "adapter_config.json")
    with open(path, encoding="utf-8") as f:
        swift_cfg = json.load(f)
    kind = swift_cfg.get("swift_type", swift_cfg.get("peft_type"))
    if str(kind).upper() != "LORA":
        raise ArgumentError(f"{path}: only LoRA converts to peft format, this adapter is {kind}")
    if swift_cfg.get("use_qa_lora") or swift_cfg.get("use_merged_linear"):
        raise ArgumentError(f"{path}: QA-LoRA and merged-linear LoRA have no peft equivalent")
    known = {f.name for f in dataclasses.fields(LoraConfig) if f.init}
    config = LoraConfig(**{k: v for k, v in swift_cfg.items() if k in known and k != "peft_type"})
    config.base_model_name_or_path = config.base_model_name_or_path or base_model
    config.task_type = config.task_type or "CAUSAL_LM"
    return config


def load_adapter_weights(src: str) -> dict[str, Any]:
    safetensors_path = os.path.join(src, "adapter_model.safetensors")
    bin_path = os.path.join(src, "adapter_model.bin")
    if os.path.isfile(safetensors_path):
        from safetensors.torch import load_file

        return load_file(safetensors_path)
    if os.path.isfile(bin_path):
        import torch

        return torch.load(bin_path, map_location="cpu", weights_only=True)
    raise ArgumentError(f"{src} has no adapter_model.safetensors (or .bin): the adapter weights are missing")


def peft_key(key: str, adapter_name: str) -> str:
    """`model.layers.0.q_proj.lora_A.default.weight` -> `base_model.model.model.layers.0.q_proj.lora_A.weight`."""
    if not key.startswith("base_model.model."):
        key = "base_model.model." + key
    for part in _ADAPTER_PARTS:
        key = key.replace(f"{part}.{adapter_name}.", f"{part}.")
    return key.replace(f"lora_magnitude_vector.{adapter_name}", "lora_magnitude_vector")
