"""`--merge_lora true`: a LoRA checkpoint + its base model -> full weights that any backend loads directly."""
from __future__ import annotations

import logging
import os
import re
from typing import Any

from ..arguments import ExportArguments
from ..errors import ArgumentError
from ..registry import ModelMeta
from .output import Step, load_source, progress_steps, resolve_source, staged_dir, write_export_args

logger = logging.getLogger("swiftcli")

_LORA_KEY = re.compile(r"^base_model\.model\.(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$")


def merge_lora(args: ExportArguments) -> str:
    """Merge args.ckpt_dir's LoRA into its base model and write full weights to args.output_dir (returned)."""
    with progress_steps() as step:
        model, tokenizer, meta, dtype = merged_model(args, step)
        with step(f"Saving to {args.output_dir}"), staged_dir(args.output_dir, args.overwrite) as tmp:
            save_full_model(model, tokenizer, tmp, args, meta, dtype)
    logger.info("Merged %s into %s: serve it with `swift infer --ckpt_dir %s`", args.ckpt_dir, args.output_dir,
                args.output_dir)
    return args.output_dir


def merged_model(args: ExportArguments, step: Step) -> tuple[Any, Any, ModelMeta, str]:
    """(model with the LoRA merged into its weights, tokenizer, base model entry, dtype name).

    peft's merge_and_unload adds B @ A * scale into each base weight in place and drops the LoRA modules, so only
    one copy of the weights is ever in memory.
    """
    from peft import PeftModel

    source = resolve_source(args)
    meta, model_dir, dtype = source
    model, tokenizer = load_source(source, step, _ckpt_tokenizer_dir(args.ckpt_dir))
    with step(f"Loading the LoRA from {args.ckpt_dir}"):
        check_adapter_fits(model, args.ckpt_dir, model_dir)
        try:
            model = PeftModel.from_pretrained(model, args.ckpt_dir)
        except ValueError as e:  # peft: "Target modules {...} not found in the base model"
            raise ArgumentError(f"LoRA {args.ckpt_dir} does not fit the base model {model_dir}: "
                                f"{str(e).splitlines()[0]}") from None
    with step("Merging"):
        model = model.merge_and_unload()
    return model, tokenizer, meta, dtype


def _ckpt_tokenizer_dir(ckpt_dir: str) -> str | None:
    """The checkpoint when training saved its tokenizer (it may carry a changed chat template), else None: the
    base model's."""
    return ckpt_dir if os.path.isfile(os.path.join(ckpt_dir, "tokenizer_config.json")) else None


def check_adapter_fits(model: Any, adapter_dir: str, model_dir: str) -> None:
    """Compare every LoRA matrix with the layer it adapts, before peft does it with a size-mismatch traceback."""
    from safetensors import safe_open

    path = os.path.join(adapter_dir, "adapter_model.safetensors")
    if not os.path.isfile(path):  # a .bin adapter: peft's own checks apply
        return
    modules = dict(model.named_modules())
    hint = "is it the right base model? Pass --model_type or --model_id_or_path"
    with safe_open(path, framework="pt") as f:
        for key in f.keys():
            match = _LORA_KEY.match(key)
            if not match:
                continue
            name, which = match.groups()
            module = modules.get(name)
            if module is None or not hasattr(module, "in_features"):
                raise ArgumentError(f"LoRA {adapter_dir} adapts {name}, which the base model {model_dir} does not "
                                    f"have as a linear layer: {hint}")
            rows, cols = f.get_slice(key).get_shape()
            got, want = (cols, module.in_features) if which == "A" else (rows, module.out_features)
            if got != want:
                side = "inputs" if which == "A" else "outputs"
                raise ArgumentError(f"LoRA {adapter_dir} does not fit the base model {model_dir}: {name} has {want} "
                                    f"{side}, the adapter {got}; {hint}")


def save_full_model(model: Any, tokenizer: Any, out_dir: str, args: ExportArguments, meta: ModelMeta,
                    dtype: str, **extra: Any) -> None:
    """Sharded safetensors + config + generation_config, tokenizer files with the chat template, and args.json."""
    model.save_pretrained(out_dir, max_shard_size=args.max_shard_size)
    tokenizer.save_pretrained(out_dir)
    template_type = meta.template if args.template_type == "AUTO" else args.template_type
    write_export_args(out_dir, args.ckpt_dir, meta, template_type, args.system, dtype, **extra)
