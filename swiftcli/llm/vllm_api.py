"""ms-swift 2.x's vLLM API (`get_vllm_engine`, `inference_vllm`, `inference_stream_vllm`) on top of VllmEngine.

The seed's calls become the same InferRequests and RequestConfigs that `swift infer` sends, so there is one
code path into vLLM. vLLM itself is imported on first use: it takes seconds, and the pt API doesn't need it.
"""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from ..model import DTYPES
from ..protocol import History, InferRequest, RequestConfig
from ..template import Template

if TYPE_CHECKING:
    from ..engine.vllm_engine import VllmEngine


@dataclass(slots=True)
class VllmGenerationConfig:
    """transformers.GenerationConfig's sampling fields, as the seed sets them (`max_new_tokens = 256`)."""

    max_new_tokens: int = 64
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    do_sample: bool = True
    seed: int | None = None
    n: int = 1
    stop: list[str] | None = None

    @classmethod
    def from_request_config(cls, config: RequestConfig) -> VllmGenerationConfig:
        """The model's defaults (greedy unless its generation_config samples), ms-swift's 64 new tokens."""
        return cls(temperature=config.temperature or 1.0, top_k=config.top_k or 50, top_p=config.top_p or 1.0,
                   repetition_penalty=config.repetition_penalty or 1.0, do_sample=config.temperature != 0)

    def to_request_config(self) -> RequestConfig:
        """As transformers reads a GenerationConfig: the sampling fields count only with do_sample."""
        return RequestConfig.from_generation_config(asdict(self), max_tokens=self.max_new_tokens, seed=self.seed,
                                                    n=self.n, stop=list(self.stop or []))


@dataclass
class VllmApiEngine:
    """What get_vllm_engine returns: the running VllmEngine with the seed's attributes around it."""

    engine: VllmEngine
    generation_config: VllmGenerationConfig

    @property
    def hf_tokenizer(self) -> Any:
        return self.engine.template.tokenizer

    @property
    def model_type(self) -> str:
        return self.engine.info.model_type

    @property
    def model_dir(self) -> str:
        return self.engine.info.model_dir

    @property
    def max_model_len(self) -> int:
        return self.engine.info.max_model_len


_DTYPES = {f"torch.{torch_name}": name for name, torch_name in DTYPES.items()}
"""str(torch dtype) -> the --dtype name, from the one table in model.py."""


def get_vllm_engine(model_type: str | None = None, torch_dtype: Any = None, *, model_id_or_path: str | None = None,
                    revision: str | None = None, gpu_memory_utilization: float = 0.9, tensor_parallel_size: int = 1,
                    max_num_seqs: int = 256, max_model_len: int | None = None, enforce_eager: bool = False,
                    enable_lora: bool = False, max_loras: int = 1, max_lora_rank: int = 16,
                    engine_kwargs: dict[str, Any] | None = None, use_async: bool = False,
                    **kwargs: Any) -> VllmApiEngine:
    """Start vLLM on a model, as `swift infer --infer_backend vllm` does.

    `use_async` is accepted for the seed's signature: the engine always runs vLLM's async engine, which serves
    both the blocking calls here and the deploy server. Other keyword arguments go to vLLM's engine arguments.
    """
    from ..arguments import EngineSetup
    from ..engine import get_engine
    from ..log import quiet_vllm_import

    quiet_vllm_import()
    dtype = _DTYPES.get(str(torch_dtype), torch_dtype) if torch_dtype is not None else "AUTO"
    extra = {**(engine_kwargs or {}), **kwargs}
    args = EngineSetup(
        model_type=model_type, model_id_or_path=model_id_or_path, model_revision=revision, dtype=dtype,
        infer_backend="vllm", gpu_memory_utilization=gpu_memory_utilization,
        tensor_parallel_size=tensor_parallel_size, max_num_seqs=max_num_seqs, max_model_len=max_model_len,
        enforce_eager=enforce_eager, vllm_enable_lora=enable_lora, max_loras=max_loras,
        vllm_max_lora_rank=max_lora_rank, vllm_engine_kwargs=json.dumps(extra) if extra else None)
    engine = get_engine(args)
    return VllmApiEngine(engine, VllmGenerationConfig.from_request_config(engine.default_config))


def inference_vllm(llm_engine: VllmApiEngine, template: Template, request_list: list[dict[str, Any]], *,
                   generation_config: VllmGenerationConfig | None = None, lora_request: Any = None,
                   use_tqdm: bool = False, **kwargs: Any) -> list[dict[str, Any]]:
    """[{'query', 'history'?, 'system'?}] -> [{'response', 'history'}], the history including this turn.
    `use_tqdm`: a progress bar of finished requests (the requests are streamed to count them)."""
    engine, requests, config = _prepare(llm_engine, template, request_list, generation_config, lora_request)
    if not use_tqdm:
        return [_result(request, response.text) for request, response in zip(request_list, engine.infer(requests,
                                                                                                      config))]
    from tqdm import tqdm

    texts = [""] * len(requests)
    with tqdm(total=len(requests)) as bar:
        for i, delta in engine.infer_stream_batch(requests, config):
            if delta.index == 0:
                texts[i] += delta.text
                bar.update(delta.finish_reason is not None)
    return [_result(request, text) for request, text in zip(request_list, texts)]


def inference_stream_vllm(llm_engine: VllmApiEngine, template: Template, request_list: list[dict[str, Any]], *,
                          generation_config: VllmGenerationConfig | None = None, lora_request: Any = None,
                          use_tqdm: bool = False, **kwargs: Any) -> Iterator[list[dict[str, Any]]]:
    """Like inference_vllm, but yields the whole list whenever a response grows (responses so far, cumulative)."""
    engine, requests, config = _prepare(llm_engine, template, request_list, generation_config, lora_request)
    responses = [""] * len(requests)
    for i, delta in engine.infer_stream_batch(requests, config):
        if delta.text and delta.index == 0:
            responses[i] += delta.text
            yield [_result(request, text) for request, text in zip(request_list, responses)]
    yield [_result(request, text) for request, text in zip(request_list, responses)]


def _prepare(llm_engine: VllmApiEngine, template: Template, request_list: list[dict[str, Any]],
             generation_config: VllmGenerationConfig | None,
             lora_request: Any) -> tuple[VllmEngine, list[InferRequest], RequestConfig]:
    """The seed's arguments as the engine's: the caller's template, the adapter by name, our RequestConfig."""
    engine = llm_engine.engine.with_template(template)
    adapter = engine.add_lora(lora_request) if lora_request is not None else None
    requests = [InferRequest.from_query(r["query"], r.get("history"), r.get("system"), adapter=adapter)
                for r in request_list]
    return engine, requests, (generation_config or llm_engine.generation_config).to_request_config()


def _result(request: dict[str, Any], response: str) -> dict[str, Any]:
    history: History = [list(turn) for turn in request.get("history") or []]
    return {"response": response, "history": history + [[request["query"], response]]}


def __getattr__(name: str) -> Any:
    """`LoRARequest` is vLLM's own class, imported on first use."""
    if name == "LoRARequest":
        from vllm.lora.request import LoRARequest

        return LoRARequest
    raise AttributeError(f"module 'swiftcli.llm' has no attribute {name!r}")
