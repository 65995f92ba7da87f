"""`get_engine(args)`: arguments -> model, template and backend -> one InferEngine."""
from __future__ import annotations

import json
import logging
import os

from ..arguments import InferArguments
from ..model import default_device, load_model, load_tokenizer, max_model_len, resolve_model, resolve_torch_dtype
from ..protocol import RequestConfig
from ..registry import ModelMeta
from ..template import Template, get_template
from .base import EngineInfo, InferEngine

logger = logging.getLogger("swiftcli")

__all__ = ["EngineInfo", "InferEngine", "get_engine", "default_request_config", "build_template"]


def default_request_config(args: InferArguments, model_dir: str) -> RequestConfig:
    """The model's generation_config.json (greedy unless it samples), overlaid with the command line."""
    path = os.path.join(model_dir, "generation_config.json")
    gen = json.load(open(path, encoding="utf-8")) if os.path.isfile(path) else {}
    sampling = gen.get("do_sample", False)
    config = RequestConfig(
        max_tokens=args.max_new_tokens,
        temperature=gen.get("temperature", 1.0) if sampling else 0.0,
        top_k=gen.get("top_k") if sampling else None,
        top_p=gen.get("top_p") if sampling else None,
        repetition_penalty=gen.get("repetition_penalty"),
        stop=list(args.stop_words))
    return config.replace(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                          repetition_penalty=args.repetition_penalty)


def build_template(args: InferArguments, meta: ModelMeta, tokenizer) -> Template:
    template_type = meta.template if args.template_type == "AUTO" else args.template_type
    return get_template(template_type, tokenizer, default_system=args.system,
                        max_length=args.max_length if args.max_length > 0 else None,
                        truncation_strategy=args.truncation_strategy)


def choose_backend(args: InferArguments, meta: ModelMeta) -> str:
    if args.infer_backend != "AUTO":
        return args.infer_backend
    return "pt"


def get_engine(args: InferArguments) -> InferEngine:
    meta, model_dir = resolve_model(args.model_type, args.model_id_or_path, args.model_revision, args.use_hf)
    backend = choose_backend(args, meta)
    tokenizer = load_tokenizer(model_dir, meta.trust_remote_code)
    template = build_template(args, meta, tokenizer)
    context = args.max_model_len or max_model_len(model_dir) or 2048
    default_config = default_request_config(args, model_dir)
    device = default_device()
    torch_dtype = resolve_torch_dtype(args.dtype, device)
    info = EngineInfo(meta.model_type, model_dir, backend, str(torch_dtype).removeprefix("torch."), context,
                      args.adapters)
    from .pt_engine import PtEngine

    model = load_model(model_dir, torch_dtype, device, meta.trust_remote_code)
    return PtEngine(model, template, info, default_config, args.max_batch_size)
