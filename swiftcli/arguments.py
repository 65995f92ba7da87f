"""Every command's arguments, declared once. The docstring under each field is its `--help` text.

`None` / 'AUTO' mean "not given": values restored from a checkpoint's `args.json` fill only those.
Validation happens here, in `__post_init__`, and nowhere else.
"""
from __future__ import annotations

import ast
import inspect
import json
import logging
import os
from dataclasses import dataclass, field, fields
from typing import Any

from .checkpoint import adapter_base_model, check_adapter_dir, is_lora_dir, read_ckpt_args
from .errors import ArgumentError
from .model import use_hf_default
from .registry import get_model_meta

logger = logging.getLogger("swiftcli")

# Fields a checkpoint's args.json restores when the user left them unset (ms-swift's load_from_ckpt_dir).
RESTORED_FIELDS = ("model_type", "model_id_or_path", "model_revision", "template_type", "system", "dtype")


@dataclass
class ModelArguments:
    model_type: str | None = None
    """Registered model type, e.g. qwen-7b-chat (see `swift list-models`). Default: smollm2-135m-instruct, embedded."""
    model_id_or_path: str | None = None
    """Hub id or local directory. Without --model_type the architecture and template are detected from its files."""
    model_revision: str | None = None
    """Hub revision (branch, tag or commit)."""
    ckpt_dir: str | None = None
    """A checkpoint made by sft or export: full weights, or a LoRA adapter (served as `default-lora`)."""
    dtype: str = "AUTO"
    """AUTO, bf16, fp16 or fp32. AUTO: bf16 (fp16 if unsupported) on GPU, fp32 on CPU."""
    use_hf: bool | None = None
    """Download from Hugging Face instead of ModelScope (also env USE_HF=1)."""
    lora_modules: list[str] = field(default_factory=list)
    """Extra LoRA adapters as name=path, chosen per request by name."""


@dataclass
class TemplateArguments:
    template_type: str = "AUTO"
    """Chat template; AUTO takes the model's registered one ('auto' = the tokenizer's own chat_template)."""
    system: str | None = None
    """System prompt; default: the template's. Pass '' for none."""
    max_length: int = -1
    """Longest prompt in tokens (-1: the model's context)."""
    truncation_strategy: str = "delete"
    """Prompt over max_length: 'delete' (refuse it) or 'truncation_left' (drop the oldest tokens)."""


@dataclass
class GenerationArguments:
    max_new_tokens: int = 2048
    """Most tokens to generate per reply."""
    temperature: float | None = None
    """Sampling temperature; 0 = greedy. Default: the model's generation_config."""
    top_k: int | None = None
    """Sample from the k most likely tokens."""
    top_p: float | None = None
    """Nucleus sampling mass."""
    repetition_penalty: float | None = None
    """>1 discourages repeating tokens."""
    stop_words: list[str] = field(default_factory=list)
    """Extra strings that end a reply."""
    seed: int = 42
    """Random seed; with the same seed sampling is reproducible."""
    stream: bool = True
    """Print replies token by token."""


@dataclass
class InferArguments(GenerationArguments, TemplateArguments, ModelArguments):
    infer_backend: str = "AUTO"
    """AUTO, vllm or pt (transformers). AUTO: vllm when installed and it supports the model, else pt."""
    max_model_len: int | None = None
    """Context length (prompt + reply); default: the model's."""
    max_batch_size: int = 16
    """pt backend: most requests decoded together."""
    save_result: bool | None = None
    """Save each turn to <result_dir>/infer_result/<time>.jsonl (default: on for datasets, off for the REPL)."""
    result_dir: str | None = None
    """Where infer_result/ goes (default: beside the checkpoint, else the current directory)."""
    # vLLM engine
    gpu_memory_utilization: float = 0.9
    """vllm: fraction of GPU memory for weights and KV cache."""
    tensor_parallel_size: int = 1
    """vllm: GPUs to shard the model over."""
    max_num_seqs: int = 256
    """vllm: most sequences scheduled at once."""
    enforce_eager: bool = False
    """vllm: no CUDA graphs (less memory, slower)."""
    vllm_enable_lora: bool = False
    """vllm: serve LoRA adapters (the --ckpt_dir adapter and --lora_modules)."""
    vllm_max_lora_rank: int = 16
    """vllm: largest LoRA rank accepted."""
    max_loras: int = 1
    """vllm: LoRA adapters active in one batch."""
    vllm_engine_kwargs: str | None = None
    """vllm: other engine arguments as JSON, e.g. '{"swap_space": 4}'."""

    def __post_init__(self) -> None:
        if self.use_hf is None:
            self.use_hf = use_hf_default()
        if self.ckpt_dir:
            self._restore_from_ckpt()
        self._validate()

    # ---- checkpoint restore ----------------------------------------------------------------------------------
    def _restore_from_ckpt(self) -> None:
        self.ckpt_dir = os.path.abspath(os.path.expanduser(self.ckpt_dir))
        saved = read_ckpt_args(self.ckpt_dir)
        if not saved:
            logger.warning("%s has no args.json: pass --model_type/--template_type if detection is wrong", self.ckpt_dir)
        for name in RESTORED_FIELDS:
            if name in saved and getattr(self, name) in (None, "AUTO"):
                setattr(self, name, saved[name])
        if self.is_lora_ckpt:
            if not self.model_type and not self.model_id_or_path:
                self.model_id_or_path = adapter_base_model(self.ckpt_dir)
        else:  # full or merged weights: the checkpoint itself is the model
            self.model_id_or_path = self.ckpt_dir

    @property
    def is_lora_ckpt(self) -> bool:
        return bool(self.ckpt_dir) and is_lora_dir(self.ckpt_dir)

    @property
    def adapters(self) -> dict[str, str]:
        """name -> path of every LoRA to load: the --ckpt_dir adapter as 'default-lora', then --lora_modules."""
        adapters = {"default-lora": self.ckpt_dir} if self.is_lora_ckpt else {}
        for item in self.lora_modules:
            name, path = item.split("=", 1)
            adapters[name] = os.path.abspath(os.path.expanduser(path))
        return adapters

    # ---- validation ------------------------------------------------------------------------------------------
    def _validate(self) -> None:
        choices = {"infer_backend": ("AUTO", "vllm", "pt"), "dtype": ("AUTO", "bf16", "fp16", "fp32"),
                   "truncation_strategy": ("delete", "truncation_left")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ArgumentError(f"--{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if self.model_type:
            get_model_meta(self.model_type)
        for item in self.lora_modules:
            if "=" not in item or not item.split("=", 1)[0] or not item.split("=", 1)[1]:
                raise ArgumentError(f"--lora_modules takes name=path, got {item!r}")
        for name, path in self.adapters.items():
            check_adapter_dir(name, path)
        numbers = [("max_new_tokens", self.max_new_tokens >= 1), ("max_batch_size", self.max_batch_size >= 1),
                   ("max_model_len", self.max_model_len is None or self.max_model_len >= 16),
                   ("temperature", self.temperature is None or 0 <= self.temperature <= 2),
                   ("top_p", self.top_p is None or 0 < self.top_p <= 1)]
        for name, ok in numbers:
            if not ok:
                raise ArgumentError(f"--{name} is out of range: {getattr(self, name)!r}")

    def saved_args(self) -> dict[str, Any]:
        """What a checkpoint made from these arguments should record."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal right under a field), through the class hierarchy."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not hasattr(klass, "__dataclass_fields__"):
            continue
        body = ast.parse(inspect.getsource(klass)).body[0].body
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def load_config_file(path: str) -> dict[str, Any]:
    """A JSON or YAML file of arguments (`--config args.yaml`)."""
    if not os.path.isfile(path):
        raise ArgumentError(f"config file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:
        raise ArgumentError(f"cannot parse {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ArgumentError(f"{path} must hold a mapping of argument names to values")
    return data


@dataclass
class DeployArguments(InferArguments):
    host: str = "127.0.0.1"
    """Address to listen on. 127.0.0.1 keeps the server on this machine; 0.0.0.0 opens it to the network."""
    port: int = 8000
    """TCP port."""
    api_key: str | None = None
    """Require `Authorization: Bearer <api_key>` on the /v1 routes (/health, /metrics and /version stay open)."""
    served_model_name: str | None = None
    """The base model's id in /v1/models and in requests' `model` (default: the model_type)."""
    owned_by: str = "swift"
    """`owned_by` of every /v1/models entry."""
    ssl_keyfile: str | None = None
    """TLS private key file (with --ssl_certfile: serve https)."""
    ssl_certfile: str | None = None
    """TLS certificate file."""
    max_concurrency: int | None = None
    """Most requests generating at once; the rest wait in line (default: no limit, the engine schedules)."""
    log_interval: float = 10
    """Seconds between throughput log lines (0: none)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.port <= 65535:
            raise ArgumentError(f"--port must be in 1..65535, got {self.port}")
        if self.api_key is not None and not self.api_key.strip():
            raise ArgumentError("--api_key must not be empty")
        if bool(self.ssl_keyfile) != bool(self.ssl_certfile):
            raise ArgumentError("--ssl_keyfile and --ssl_certfile go together")
        for name in ("ssl_keyfile", "ssl_certfile"):
            if getattr(self, name) and not os.path.isfile(getattr(self, name)):
                raise ArgumentError(f"--{name} {getattr(self, name)!r} does not exist")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ArgumentError(f"--max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.log_interval < 0:
            raise ArgumentError(f"--log_interval must be >= 0, got {self.log_interval}")
        if self.served_model_name is not None and self.served_model_name in self.adapters:
            raise ArgumentError(f"--served_model_name {self.served_model_name!r} is also a LoRA name: "
                                "each model id must be unique")
