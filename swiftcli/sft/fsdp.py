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

from typing import Any

from ..arguments.sft import FsdpPlan, parse_fsdp  # noqa: F401  (parse_fsdp: the plan's reader)


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
