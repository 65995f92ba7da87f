"""`--deepspeed zero2|zero3|<config.json>`: DeepSpeed ZeRO through transformers' Trainer integration.

ZeRO-2 shards the optimizer states and gradients across the processes, ZeRO-3 the weights too: the path past one
GPU's (or one machine's) memory for full fine-tuning. The built-in configs are ms-swift's, with "auto" values that the
Trainer fills from the training arguments (batch size, accumulation, learning rate, bf16/fp16). Needs the `deepspeed`
package (CUDA GPUs; it builds its ops on first use).
"""
from __future__ import annotations

import json
from typing import Any

from ..arguments.sft import DEEPSPEED_BUILTIN as BUILTIN  # noqa: F401  (the names this module writes)


def _base() -> dict[str, Any]:
    return {
        "fp16": {"enabled": "auto", "loss_scale": 0, "loss_scale_window": 1000, "initial_scale_power": 16,
                 "hysteresis": 2, "min_loss_scale": 1},
        "bf16": {"enabled": "auto"},
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "train_batch_size": "auto",
        "train_micro_batch_size_per_gpu": "auto",
        "steps_per_print": 2000,
        "wall_clock_breakdown": False,
    }


def deepspeed_config(value: str) -> dict[str, Any]:
    """The config dict for --deepspeed: a built-in name, or a JSON file."""
    if value == "zero2":
        return {**_base(), "zero_optimization": {
            "stage": 2, "allgather_partitions": True, "allgather_bucket_size": 2e8, "overlap_comm": True,
            "reduce_scatter": True, "reduce_bucket_size": 2e8, "contiguous_gradients": True}}
    if value == "zero3":
        return {**_base(), "zero_optimization": {
            "stage": 3, "overlap_comm": True, "contiguous_gradients": True, "sub_group_size": 1e9,
            "reduce_bucket_size": "auto", "stage3_prefetch_bucket_size": "auto",
            "stage3_param_persistence_threshold": "auto", "stage3_max_live_parameters": 1e9,
            "stage3_max_reuse_distance": 1e9, "stage3_gather_16bit_weights_on_model_save": True}}
    with open(value, encoding="utf-8") as f:
        return json.load(f)


def zero_stage(config: dict[str, Any]) -> int:
    return int((config.get("zero_optimization") or {}).get("stage", 0))
