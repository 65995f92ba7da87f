"""What /v1/chat/completions and /v1/completions do: OpenAI request -> engine -> one JSON reply or an SSE stream.

Only the engine interface is used (infer_async, infer_stream_async, encode, resolve_config, template, info), so
the pt and vLLM backends are served the same way.
"""
from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi.responses import Response, StreamingResponse

from ..engine import InferEngine
from ..errors import ArgumentError, ContextLengthError, SwiftError
from ..protocol import InferRequest, InferResponse, RequestConfig, StreamDelta, Usage
from .metrics import ServerMetrics
from .openai_protocol import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ErrorInfo,
    ErrorResponse,
    ModelCard,
    ModelList,
    SamplingRequest,
    UsageInfo,
    chat_choice,
    chat_logprobs,
    completion_logprobs,
    random_id,
)

logger = logging.getLogger("swiftcli")
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
DONE = "data: [DONE]\n\n"
_COMPACT = (",", ":")


class APIError(Exception):
    """An error the client receives as OpenAI's `{"error": {...}}` with this HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.recorded = False
        """Already counted and logged as a request's outcome (the error handler must not do it again)."""

    def body(self) -> dict[str, Any]:
        kind = "server_error" if self.status >= 500 else "invalid_request_error"
        info = ErrorInfo(message=self.message, type=kind, param=self.param, code=self.code)
        return ErrorResponse(error=info).model_dump()


def to_api_error(exc: BaseException, endpoint: str) -> APIError:
    """Our own errors are the client's (4xx); anything else is an engine failure (500)."""
    if isinstance(exc, APIError):
        return exc
    prompt_param = "messages" if endpoint == CHAT else "prompt"
    if isinstance(exc, ContextLengthError):
        return APIError(400, str(exc), param=prompt_param, code="context_length_exceeded")
    if isinstance(exc, SwiftError):
        return APIError(400, str(exc))
    return APIError(500, f"The engine failed on this request: {type(exc).__name__}: {exc}")


@dataclass
class Job:
    """One HTTP request's work: an engine request per prompt sharing one config, and what its log line says."""

    endpoint: str
    model: str
    requests: list[InferRequest]
    config: RequestConfig
    stream: bool
    include_usage: bool
    ignored: list[str]
    id: str
    start: float = field(default_factory=time.perf_counter)
    first_text: float | None = None
    usage: UsageInfo | None = None
    status: str = "200"


class ChunkWriter:
    """SSE lines of one stream. The constant head is serialized once; per token only the choice is encoded."""

    def __init__(self, job: Job, obj: str):
        head = json.dumps({"id": job.id, "object": obj, "created": int(time.time()), "model": job.model},
                          separators=_COMPACT)
        self.head = "data: " + head[:-1] + ',"choices":['

    def choice(self, choice: dict[str, Any]) -> str:
        return f"{self.head}{json.dumps(choice, ensure_ascii=False, separators=_COMPACT)}]}}\n\n"

    def usage(self, usage: UsageInfo) -> str:
        return f'{self.head}],"usage":{usage.model_dump_json()}}}\n\n'

    @staticmethod
    def error(err: APIError) -> str:
        return f"data: {json.dumps(err.body(), ensure_ascii=False)}\n\n"


class ClosingStreamingResponse(StreamingResponse):
    """Closes its generator however the response ends, so a gone client's generation stops now, not at GC."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


class ChatFormat:
    """Chat shapes. Every delta carries `content` as a string (the seed's clients print it unchecked)."""

    chunk_object = "chat.completion.chunk"

    def __init__(self, request: ChatCompletionRequest):
        self.n = request.n

    def opening(self, i: int) -> list[dict[str, Any]]:
        return [{"index": k, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                for k in range(self.n)]

    def delta(self, i: int, d: StreamDelta) -> dict[str, Any]:
        return {"index": d.index, "delta": {"content": d.text}, "logprobs": chat_logprobs(d.logprobs),
                "finish_reason": d.finish_reason}

    def response(self, job: Job, results: list[InferResponse]) -> ChatCompletionResponse:
        return ChatCompletionResponse(id=job.id, model=job.model, usage=job.usage,
                                      choices=[chat_choice(c) for c in results[0].choices])


class CompletionFormat:
    """Legacy completions: choice index = prompt index * n + choice; `echo` puts the prompt first."""

    chunk_object = "text_completion"

    def __init__(self, request: CompletionRequest):
        self.n, self.prompts, self.echo = request.n, request.prompts, request.echo
        self.offsets: dict[int, int] = {}
        """Characters streamed so far per choice (logprobs' text_offset)."""

    def _head(self, i: int) -> str:
        return self.prompts[i] if self.echo else ""

    def opening(self, i: int) -> list[dict[str, Any]]:
        if not self.echo:
            return []
        return [{"index": i * self.n + k, "text": self.prompts[i], "logprobs": None, "finish_reason": None}
                for k in range(self.n)]

    def delta(self, i: int, d: StreamDelta) -> dict[str, Any]:
        index = i * self.n + d.index
        offset = self.offsets.get(index, len(self._head(i)))
        self.offsets[index] = offset + len(d.text)
        return {"index": index, "text": d.text, "logprobs": completion_logprobs(d.logprobs, offset),
                "finish_reason": d.finish_reason}

    def response(self, job: Job, results: list[InferResponse]) -> CompletionResponse:
        choices = [CompletionChoice(index=i * self.n + c.index, text=self._head(i) + c.text,
                                    finish_reason=c.finish_reason,
                                    logprobs=completion_logprobs(c.logprobs, len(self._head(i))))
                   for i, result in enumerate(results) for c in result.choices]
        return CompletionResponse(id=job.id, model=job.model, choices=choices, usage=job.usage)


class OpenAIServing:
    def __init__(self, engine: InferEngine, metrics: ServerMetrics, served_model_name: str | None = None,
                 owned_by: str = "swift", max_concurrency: int | None = None):
        self.engine, self.metrics, self.owned_by = engine, metrics, owned_by
        self.base_model = served_model_name or engine.info.model_type
        self.created = int(time.time())
        self.slots = asyncio.Semaphore(max_concurrency) if max_concurrency else None

    # ---- models --------------------------------------------------------------------------------------------------
    def models(self) -> ModelList:
        info, is_chat = self.engine.info, not self.engine.template.is_generation
        common = dict(created=self.created, owned_by=self.owned_by, max_model_len=info.max_model_len, is_chat=is_chat)
        cards = [ModelCard(id=self.base_model, root=info.model_dir, **common)]
        cards += [ModelCard(id=name, root=path, parent=self.base_model, **common)
                  for name, path in info.adapters.items()]
        return ModelList(data=cards)

    def adapter_for(self, model: str) -> str | None:
        """The LoRA a `model` name selects (None: the base model)."""
        if model == self.base_model:
            return None
        if model in self.engine.info.adapters:
            return model
        raise APIError(404, f"The model `{model}` does not exist. Served: {[c.id for c in self.models().data]}",
                       param="model", code="model_not_found")

    # ---- endpoints -----------------------------------------------------------------------------------------------
    async def chat(self, body: ChatCompletionRequest) -> Response:
        adapter = self.adapter_for(body.model)
        if self.engine.template.is_generation:
            raise APIError(400, f"`{body.model}` is a base (generation) model without a chat template: "
                                f"send a prompt to {COMPLETIONS} instead", param="messages")
        try:
            request = InferRequest(messages=body.message_dicts(), adapter=adapter)
        except ArgumentError as e:
            raise APIError(400, str(e), param="messages") from None
        return await self._respond(self._job(CHAT, body, [request]), ChatFormat(body))

    async def completion(self, body: CompletionRequest) -> Response:
        """The raw prompt, never wrapped in the chat template."""
        adapter = self.adapter_for(body.model)
        try:
            requests = [InferRequest(prompt=p, adapter=adapter) for p in body.prompts]
        except ArgumentError as e:
            raise APIError(400, str(e), param="prompt") from None
        return await self._respond(self._job(COMPLETIONS, body, requests), CompletionFormat(body))

    def _job(self, endpoint: str, body: SamplingRequest, requests: list[InferRequest]) -> Job:
        prefix = "chatcmpl" if endpoint == CHAT else "cmpl"
        return Job(endpoint, body.model, requests, body.to_request_config(), body.stream, body.include_usage,
                   sorted(body.model_extra or {}), random_id(prefix))

    async def _respond(self, job: Job, fmt: ChatFormat | CompletionFormat) -> Response:
        if not job.stream:
            return await self._full(job, fmt)
        for request in job.requests:  # fail with a 4xx now: once the stream starts the status is 200
            self.engine.resolve_config(job.config, len(self.engine.encode(request).input_ids))
        return ClosingStreamingResponse(self._stream(job, fmt), media_type="text/event-stream",
                                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    # ---- generation ----------------------------------------------------------------------------------------------
    async def _full(self, job: Job, fmt: ChatFormat | CompletionFormat) -> Response:
        async with self._track(job):
            results = await asyncio.gather(*(self.engine.infer_async(r, job.config) for r in job.requests))
            job.usage = UsageInfo.of([r.usage for r in results])
        return Response(fmt.response(job, results).model_dump_json(), media_type="application/json")

    async def _stream(self, job: Job, fmt: ChatFormat | CompletionFormat) -> AsyncIterator[str]:
        writer = ChunkWriter(job, fmt.chunk_object)
        usages: list[Usage] = []
        async with self._track(job):
            try:
                for i, request in enumerate(job.requests):
                    for choice in fmt.opening(i):
                        yield writer.choice(choice)
                    async with aclosing(self.engine.infer_stream_async(request, job.config)) as deltas:
                        async for d in deltas:
                            if d.usage is not None:
                                usages.append(d.usage)
                            if d.text or d.finish_reason:
                                job.first_text = job.first_text or time.perf_counter()
                                yield writer.choice(fmt.delta(i, d))
                job.usage = UsageInfo.of(usages)
                if job.include_usage:
                    yield writer.usage(job.usage)
            except Exception as e:  # the 200 is out: the error can only travel as the last chunk
                yield writer.error(self._fail(job, e))
            yield DONE

    def _fail(self, job: Job, exc: Exception) -> APIError:
        err = to_api_error(exc, job.endpoint)
        err.recorded = True
        job.status = str(err.status)
        if err.status >= 500:
            logger.error("%s: engine failure", job.id, exc_info=exc)
        return err

    @asynccontextmanager
    async def _track(self, job: Job) -> AsyncIterator[None]:
        """Queue under --max_concurrency, count as running, and however it ends: metrics plus one log line."""
        if self.slots is not None:
            self.metrics.waiting.inc()
            try:
                await self.slots.acquire()
            finally:
                self.metrics.waiting.dec()
        self.metrics.running.inc()
        try:
            yield
        except (asyncio.CancelledError, GeneratorExit):
            job.status = "aborted"
            raise
        except Exception as e:
            err = self._fail(job, e)
            if err is e:
                raise
            raise err from e
        finally:
            self.metrics.running.dec()
            if self.slots is not None:
                self.slots.release()
            self._record(job)

    def _record(self, job: Job) -> None:
        m, latency = self.metrics, time.perf_counter() - job.start
        m.requests.labels(job.endpoint, job.status).inc()
        m.latency.observe(latency)
        if job.first_text is not None:
            m.ttft.observe(job.first_text - job.start)
        usage = job.usage or UsageInfo()
        m.prompt_tokens.inc(usage.prompt_tokens)
        m.generation_tokens.inc(usage.completion_tokens)
        ttft = f" ttft={job.first_text - job.start:.2f}s" if job.first_text is not None else ""
        ignored = f" ignored_fields={','.join(job.ignored)}" if job.ignored else ""
        logger.info("%s %s model=%s stream=%s prompt_tokens=%d completion_tokens=%d%s latency=%.2fs status=%s%s",
                    job.id, job.endpoint, job.model, job.stream, usage.prompt_tokens, usage.completion_tokens, ttft,
                    latency, job.status, ignored)

    def record_rejected(self, endpoint: str, err: APIError) -> None:
        """Requests refused before any generation (validation, unknown model, API key) count and log too."""
        self.metrics.requests.labels(endpoint, str(err.status)).inc()
        logger.info("%s status=%d: %s", endpoint, err.status, err.message)
