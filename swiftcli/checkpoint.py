"""Self-describing checkpoints: `args.json` beside the weights (ms-swift's `sft_args.json` is read too)."""
from __future__ import annotations

import json
import os
from typing import Any

from .errors import ArgumentError, ModelNotFoundError

ARGS_FILES = ("args.json", "sft_args.json", "export_args.json")


def read_ckpt_args(ckpt_dir: str) -> dict[str, Any]:
    """The arguments a checkpoint was made with; {} when it records none."""
    if not os.path.isdir(ckpt_dir):
        raise ModelNotFoundError(f"ckpt_dir {ckpt_dir!r} does not exist or is not a directory")
    for name in ARGS_FILES:
        path = os.path.join(ckpt_dir, name)
        if os.path.isfile(path):
            try:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
            except (OSError, ValueError) as e:
                raise ArgumentError(f"cannot read {path}: {e}") from None
            if not isinstance(data, dict):
                raise ArgumentError(f"{path} must hold a JSON object")
            return data
    return {}


def write_ckpt_args(ckpt_dir: str, args: dict[str, Any]) -> None:
    with open(os.path.join(ckpt_dir, "args.json"), "w", encoding="utf-8") as f:
        json.dump(args, f, ensure_ascii=False, indent=2, default=str)


def is_lora_dir(path: str) -> bool:
    """A peft adapter directory."""
    return os.path.isfile(os.path.join(path, "adapter_config.json"))


def adapter_base_model(path: str) -> str | None:
    with open(os.path.join(path, "adapter_config.json"), encoding="utf-8") as f:
        return json.load(f).get("base_model_name_or_path")


def adapter_rank(path: str) -> int:
    """Largest LoRA rank in an adapter (vLLM must be started with at least this max_lora_rank)."""
    with open(os.path.join(path, "adapter_config.json"), encoding="utf-8") as f:
        cfg = json.load(f)
    return max([int(cfg.get("r", 8))] + [int(v) for v in (cfg.get("rank_pattern") or {}).values()])


def check_adapter_dir(name: str, path: str) -> None:
    """Fail before any engine starts if an adapter path is missing or not a peft adapter."""
    if not os.path.isdir(path):
        raise ModelNotFoundError(f"LoRA {name!r}: {path!r} does not exist")
    if not is_lora_dir(path):
        hint = " (ms-swift format: convert with `swift export --to_peft_format true`)" if os.path.isfile(
            os.path.join(path, "default", "adapter_config.json")) else ""
        raise ModelNotFoundError(f"LoRA {name!r}: {path!r} is not a peft adapter (no adapter_config.json){hint}")
