"""The engine group (which backend, how large, how it runs) and `EngineSetup`, everything `get_engine` reads:
model + template + generation + engine. `swift infer`, `deploy` and `app-ui` build on EngineSetup."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import ClassVar

from ..checkpoint import check_adapter_dir
from ..errors import ArgumentError
from ..reasoning import PARSERS as REASONING_PARSERS
from ..tools import PARSERS as TOOL_PARSERS
from .base import Arguments, check_choices, check_ranges, json_object_flag
from .generation import GenerationArguments
from .model import ModelArguments, TemplateArguments


@dataclass
class EngineArguments(Arguments):
    infer_backend: str = "AUTO"
    """AUTO, vllm or pt (transformers). AUTO: vllm when installed and it supports the model, else pt."""
    max_model_len: int | None = None
    """Context length (prompt + reply); default: the model's."""
    max_batch_size: int = 16
    """pt backend: most requests decoded together."""
    torch_compile: bool | None = None
    """pt backend: torch.compile the static-cache decode step before it is captured in CUDA graphs. Default: on CUDA
    (the first request waits for the compilation), off on CPU."""
    gpu_memory_utilization: float = 0.9
    """vllm: fraction of GPU memory for weights and KV cache."""
    tensor_parallel_size: int = 1
    """Split every layer over N processes (vllm: its own; pt: transformers' tensor-parallel plan, one process per
    GPU, or per CPU core with gloo)."""
    device_map: str | None = None
    """pt: place the layers over the visible GPUs in one process (accelerate's device_map, e.g. auto): a model larger
    than one GPU without --tensor_parallel_size."""
    max_num_seqs: int = 256
    """vllm: most sequences scheduled at once."""
    enforce_eager: bool | None = None
    """No CUDA graphs / torch.compile. Default: false on GPU (the pt backend decodes from a static KV cache in CUDA
    graphs); on CPU, vllm compiles for the servers (deploy, app-ui: faster decoding for the server's whole life, the
    first start compiles for 1-2 min, later ones read vLLM's compile cache) and runs eagerly for infer (fast
    start)."""
    lora_modules: list[str] = field(default_factory=list)
    """Extra LoRA adapters as name=path, chosen per request by name."""
    vllm_enable_lora: bool = False
    """vllm: serve LoRA adapters (the --ckpt_dir adapter and --lora_modules)."""
    vllm_max_lora_rank: int = 16
    """vllm: largest LoRA rank accepted."""
    max_loras: int = 1
    """vllm: LoRA adapters active in one batch."""
    vllm_engine_kwargs: str | None = None
    """vllm: other engine arguments as JSON, e.g. '{"swap_space": 4}'."""

    serving: ClassVar[bool] = False
    """Whether the command is a long-lived server (deploy, app-ui): it compiles by default where that pays."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choices(self, {"infer_backend": ("AUTO", "vllm", "pt")})
        for item in self.lora_modules:
            if "=" not in item or not item.split("=", 1)[0] or not item.split("=", 1)[1]:
                raise ArgumentError(f"--lora_modules takes name=path, got {item!r}")
        if self.tensor_parallel_size > 1 and self.device_map:
            raise ArgumentError("--tensor_parallel_size and --device_map both split the model: choose one")
        check_ranges(self, [("max_batch_size", self.max_batch_size >= 1),
                            ("tensor_parallel_size", self.tensor_parallel_size >= 1),
                            ("max_model_len", self.max_model_len is None or self.max_model_len >= 16)])


@dataclass
class ReplyArguments(Arguments):
    """How a chat model's replies are read, and the chat template's own variables."""

    reasoning_parser: str = "AUTO"
    """Split a reasoning model's <think> part into reasoning_content: qwen3, deepseek_r1 or none. AUTO: from the chat
    template (qwen3 when it writes think blocks, deepseek_r1 when its generation prompt opens one)."""
    tool_call_parser: str = "AUTO"
    """How `swift deploy` reads tool calls in replies to requests with tools: hermes (<tool_call>), llama3_json or
    mistral ([TOOL_CALLS]). AUTO: from the chat template (registered templates: hermes)."""
    chat_template_kwargs: str | None = None
    """Variables for the model's own chat template as JSON, e.g. '{"enable_thinking": false}' (requests may add
    their own)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choices(self, {"reasoning_parser": ("AUTO", "none", *REASONING_PARSERS),
                             "tool_call_parser": ("AUTO", *TOOL_PARSERS)})
        self.template_kwargs = json_object_flag("chat_template_kwargs", self.chat_template_kwargs)


@dataclass
class EngineSetup(ReplyArguments, EngineArguments, GenerationArguments, TemplateArguments, ModelArguments):
    """What an engine is built from (`get_engine(setup)`); the seed's `get_vllm_engine` builds one directly."""

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, path in self.adapters.items():
            check_adapter_dir(name, path)

    @property
    def default_adapter(self) -> str | None:
        """The adapter that REPL and dataset requests use: the --ckpt_dir LoRA, if that is what was given."""
        return "default-lora" if self.is_lora_ckpt else None

    @property
    def adapters(self) -> dict[str, str]:
        """name -> path of every LoRA to load: the --ckpt_dir adapter as 'default-lora', then --lora_modules."""
        adapters = {"default-lora": self.ckpt_dir} if self.is_lora_ckpt else {}
        for item in self.lora_modules:
            name, path = item.split("=", 1)
            adapters[name] = os.path.abspath(os.path.expanduser(path))
        return adapters
