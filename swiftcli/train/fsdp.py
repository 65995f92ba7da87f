"""`--fsdp`: fully sharded data parallelism (PyTorch FSDP2), for models whose weights, gradients and optimizer state
don't fit one device. Each process holds 1/N of every weight; a decoder layer's weights are gathered just before it
runs and freed after.

Two existing engines do the sharding, never our own code:
- CUDA: the Trainer's FSDP (accelerate's FSDP2 plugin). `full_shard` or `shard_grad_op` (keep the gathered weights
  from the forward to the backward: more memory, less communication), `offload` (parameters in CPU memory), wrapping
  by decoder layer (the model's `_no_split_modules`), mixed precision from --dtype, activation checkpointing from
  --gradient_checkpointing, a full state dict gathered to rank 0 when a checkpoint is saved.
- CPU (gloo): accelerate has no FSDP there, so the model is sharded when it loads, by transformers' own FSDP2
  (`from_pretrained(distributed_config=DistributedConfig(fsdp_size=N))`); `full_shard` only, and its checkpoints
  hold the weights but no optimizer state (transformers can't resume such a model).
Either way every checkpoint is a plain transformers/peft one that `swift infer/export --ckpt_dir` read.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from ..errors import ArgumentError

MODES = ("full_shard", "shard_grad_op")
OPTIONS = ("auto_wrap", "offload")


@dataclass
class FsdpPlan:
    """What `--fsdp` and `--fsdp_config` ask for, validated."""

    mode: str = "full_shard"
    offload: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    """Extra keys of transformers' `TrainingArguments.fsdp_config` (a JSON file's content)."""


def parse_fsdp(value: str, config: str | None) -> FsdpPlan:
    """`--fsdp 'full_shard auto_wrap offload'` (ms-swift's and transformers' words) or `--fsdp <config.json>`.

    Raises ArgumentError (one line) for an unknown word, an unreadable file, or two sharding modes."""
    words = value.split()
    plan = FsdpPlan()
    if len(words) == 1 and words[0].endswith(".json"):
        plan.config = read_json(words[0], "--fsdp")
        words = []
    if config:
        plan.config.update(read_json(config, "--fsdp_config"))
    for key in list(plan.config):  # transformers accepts fsdp_-prefixed keys too
        if key.startswith("fsdp_"):
            plan.config[key[5:]] = plan.config.pop(key)
    unknown = [w for w in words if w not in MODES + OPTIONS]
    if unknown:
        raise ArgumentError(f"--fsdp: unknown option {unknown[0]!r}; use {' or '.join(MODES)}, optionally with "
                            f"{' and '.join(OPTIONS)}, or a JSON config file")
    modes = [w for w in words if w in MODES]
    if len(modes) > 1:
        raise ArgumentError(f"--fsdp takes one sharding mode, got {' and '.join(modes)}")
    if modes:
        plan.mode = modes[0]
    elif "reshard_after_forward" in plan.config:
        plan.mode = "full_shard" if plan.config["reshard_after_forward"] else "shard_grad_op"
    plan.offload = "offload" in words or bool(plan.config.get("cpu_offload", False))
    return plan


def read_json(path: str, flag: str) -> dict[str, Any]:
    """An fsdp_config file (the JSON object the arguments' `--config` reader accepts), errors naming the flag."""
    from ..arguments import load_config_file

    try:
        return load_config_file(os.path.expanduser(path))
    except ArgumentError as e:
        raise ArgumentError(f"{flag}: {e}") from None


def check_plan(plan: FsdpPlan, device: str, processes: int, resume: bool) -> None:
    """Refuse what the chosen engine can't do, before any weight loads."""
    if processes < 2:
        raise ArgumentError("--fsdp shards across processes: launch them with NPROC_PER_NODE=N (N >= 2)")
    if device == "cpu":
        if plan.mode != "full_shard" or plan.offload:
            raise ArgumentError(f"--fsdp on CPU is full_shard only (transformers' FSDP2), got {plan.mode}"
                                f"{' offload' if plan.offload else ''}: use a CUDA machine for that")
        if resume:
            raise ArgumentError("--resume_from_checkpoint with --fsdp on CPU: transformers' load-time FSDP keeps no "
                                "optimizer state in checkpoints; start a new run (or train on CUDA)")


def training_kwargs(plan: FsdpPlan, device: str, gradient_checkpointing: bool) -> dict[str, Any]:
    """TrainingArguments keys: the Trainer's FSDP on CUDA; on CPU only `save_only_model` (see the module doc)."""
    if device == "cpu":
        return {"save_only_model": True}
    config = {"version": 2, "reshard_after_forward": plan.mode == "full_shard", "cpu_offload": plan.offload,
              "auto_wrap_policy": "TRANSFORMER_BASED_WRAP", "state_dict_type": "FULL_STATE_DICT",
              "activation_checkpointing": gradient_checkpointing, **plan.config}
    # FSDP checkpoints activations itself; the Trainer refuses both at once
    return {"fsdp": True, "fsdp_config": config, "gradient_checkpointing": False}


def load_kwargs(device: str, processes: int) -> dict[str, Any]:
    """from_pretrained keys: on CPU the model is sharded as it loads (transformers' DistributedConfig)."""
    if device != "cpu":
        return {}
    from transformers.distributed import DistributedConfig

    return {"distributed_config": DistributedConfig(fsdp_size=processes)}


def save_adapter_collectively(trainer: Any, output_dir: str | None) -> bool:
    """A LoRA on a model sharded at load time: every rank reads the adapter's state dict (reading a sharded model's
    state dict is collective), rank 0 writes it. transformers' own save reads it on rank 0 alone, which hangs or
    aborts the other ranks. Returns False where this does not apply (the Trainer's own save is right)."""
    from peft import PeftModel, get_peft_model_state_dict

    model = trainer.model
    if not (isinstance(model, PeftModel) and getattr(model.get_base_model(), "is_distributed_loading_by_transformers",
                                                     False)):
        return False
    state_dict = get_peft_model_state_dict(model)
    if trainer.args.should_save:
        trainer._save(output_dir or trainer.args.output_dir, state_dict=state_dict)
    return True
