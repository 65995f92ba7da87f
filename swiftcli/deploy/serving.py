"""What /v1/chat/completions and /v1/completions do: OpenAI request -> engine -> one JSON reply or an SSE stream.

Only the engine interface is used (infer_async, infer_stream_async, encode, resolve_config, template, info), so
the pt and vLLM backends are served the same way.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing, asynccontextmanager
from typing import Any

from fastapi.responses import Response, StreamingResponse

from ..engine import InferEngine
from ..errors import ArgumentError
from ..protocol import InferRequest, Usage
from ..tools import needs_special_tokens
from .formats import (
    CHAT,
    COMPLETIONS,
    APIError,
    ChatFormat,
    ChunkWriter,
    CompletionFormat,
    Job,
    to_api_error,
)
from .metrics import ServerMetrics
from .openai_protocol import ChatCompletionRequest, CompletionRequest, SamplingRequest, random_id
from .openai_responses import ModelCard, ModelList, UsageInfo

logger = logging.getLogger("swiftcli")
DONE = "data: [DONE]\n\n"


class ClosingStreamingResponse(StreamingResponse):
    """Closes its generator however the response ends, so a gone client's generation stops now, not at GC."""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()


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

    def model(self, model_id: str) -> ModelCard:
        """OpenAI's retrieve-model: one card of /v1/models, or 404."""
        card = next((c for c in self.models().data if c.id == model_id), None)
        if card is None:
            raise self._unknown_model(model_id)
        return card

    def _unknown_model(self, model: str) -> APIError:
        return APIError(404, f"The model `{model}` does not exist. Served: {[c.id for c in self.models().data]}",
                        param="model", code="model_not_found")

    def adapter_for(self, model: str) -> str | None:
        """The LoRA a `model` name selects (None: the base model)."""
        if model == self.base_model:
            return None
        if model in self.engine.info.adapters:
            return model
        raise self._unknown_model(model)

    # ---- endpoints -----------------------------------------------------------------------------------------------
    async def chat(self, body: ChatCompletionRequest) -> Response:
        body.check_text()
        adapter = self.adapter_for(body.model)
        if self.engine.template.is_generation:
            raise APIError(400, f"`{body.model}` is a base (generation) model without a chat template: "
                                f"send a prompt to {COMPLETIONS} instead", param="messages")
        try:
            request = InferRequest(messages=body.message_dicts(), adapter=adapter,
                                   add_generation_prompt=body.add_generation_prompt,
                                   continue_final_message=body.continue_final_message,
                                   tools=body.tools if body.calls_tools else None,
                                   chat_template_kwargs=body.chat_template_kwargs)
        except ArgumentError as e:
            raise APIError(400, str(e), param="messages") from None
        job = self._job(CHAT, body, [request])
        if body.calls_tools and needs_special_tokens(self.engine.template.tool_parser):  # its markers are special
            job.config = job.config.replace(skip_special_tokens=False)
        return await self._respond(job, ChatFormat(body, self.engine.template))

    async def completion(self, body: CompletionRequest) -> Response:
        """The raw prompt, never wrapped in the chat template."""
        body.check_text()
        adapter = self.adapter_for(body.model)
        try:
            requests = [InferRequest(prompt=p, adapter=adapter) for p in body.prompts]
        except ArgumentError as e:
            raise APIError(400, str(e), param="prompt") from None
        job = self._job(COMPLETIONS, body, requests)
        texts = [p if isinstance(p, str) else self._decode(p) for p in body.prompts]
        first_tokens = ([self._decode(self.engine.encode(r).input_ids[:1]) for r in requests]
                        if body.echo_logprobs else [])
        return await self._respond(job, CompletionFormat(body, texts, first_tokens))

    def _decode(self, ids: list[int]) -> str:
        return self.engine.template.tokenizer.decode(ids)

    def _job(self, endpoint: str, body: SamplingRequest, requests: list[InferRequest]) -> Job:
        prefix = "chatcmpl" if endpoint == CHAT else "cmpl"
        return Job(endpoint, body.model, requests, body.to_request_config(), body.stream, body.include_usage,
                   body.continuous_usage, random_id(prefix))

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
                    prompt_tokens = len(self.engine.encode(request).input_ids) if job.continuous_usage else 0
                    opening = fmt.opening(i)  # sent with the first token, as vLLM does: TTFT is the first token's
                    async with aclosing(self.engine.infer_stream_async(request, job.config)) as deltas:
                        async for d in deltas:
                            job.first_token = job.first_token or time.perf_counter()
                            for choice in opening:
                                yield writer.choice(choice, self._usage_so_far(job, prompt_tokens, 0))
                            opening = []
                            if d.usage is not None:
                                usages.append(d.usage)
                            if d.text or d.finish_reason or d.prompt_logprobs or d.logprobs:
                                usage = self._usage_so_far(job, prompt_tokens, d.completion_tokens or 0)
                                for choice in fmt.deltas(i, d):
                                    yield writer.choice(choice, usage)
                job.usage = UsageInfo.of(usages)
                if job.include_usage:
                    yield writer.usage(job.usage)
            except Exception as e:  # the 200 is out: the error can only travel as the last chunk
                yield writer.error(self._fail(job, e))
            yield DONE

    @staticmethod
    def _usage_so_far(job: Job, prompt_tokens: int, completion_tokens: int) -> UsageInfo | None:
        """vLLM's continuous_usage_stats: the prompt's tokens and this choice's so far, on every chunk."""
        if not job.continuous_usage:
            return None
        return UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                         total_tokens=prompt_tokens + completion_tokens)

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
        if job.first_token is not None:
            m.ttft.observe(job.first_token - job.start)
        usage = job.usage or UsageInfo()
        m.prompt_tokens.inc(usage.prompt_tokens)
        m.generation_tokens.inc(usage.completion_tokens)
        ttft = f" ttft={job.first_token - job.start:.2f}s" if job.first_token is not None else ""
        logger.info("%s %s model=%s stream=%s prompt_tokens=%d completion_tokens=%d%s latency=%.2fs status=%s",
                    job.id, job.endpoint, job.model, job.stream, usage.prompt_tokens, usage.completion_tokens, ttft,
                    latency, job.status)

    def record_rejected(self, route: str | None, path: str, err: APIError) -> None:
        """Requests refused before any generation (validation, unknown model, API key) count and log too.
        route: the matched route's path template; None (no route matched) counts as "other", so a client's
        made-up paths cannot add label values without bound."""
        self.metrics.requests.labels(route or "other", str(err.status)).inc()
        logger.info("%s status=%d: %s", path, err.status, err.message)
