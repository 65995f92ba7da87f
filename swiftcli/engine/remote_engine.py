"""`RemoteEngine`: a running `swift deploy` (or any OpenAI-compatible server) behind the engine interface.

`swift app-ui --api_url` chats through it, so the page has one code path whatever serves the model. Requests
become chat or completions calls of the official `openai` SDK and streamed chunks become StreamDeltas. Closing a
stream closes its HTTP response, which the server takes as the client leaving: it aborts that generation.

The server renders the chat template and knows the model's limits, so this engine has no tokenizer: `encode` and
`resolve_config`, the local engines' helpers, do not apply here.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any

import openai
from openai import AsyncOpenAI, OpenAI

from ..errors import ArgumentError, SwiftError
from ..protocol import Choice, InferRequest, InferResponse, RequestConfig, StreamDelta, Usage
from ..request_config import openai_body
from ..template import Template
from .base import EngineInfo, InferEngine


class RemoteEngine(InferEngine):
    def __init__(self, api_url: str, api_key: str | None = None, default_config: RequestConfig | None = None):
        self.api_url = api_url.rstrip("/")
        # No retries: a failed generation is reported, not silently run again.
        client_kwargs = {"base_url": self.api_url, "api_key": api_key or "EMPTY", "max_retries": 0}
        self.client, self.async_client = OpenAI(**client_kwargs), AsyncOpenAI(**client_kwargs)
        with self._server_errors():
            cards = self.client.models.list().data
        base = next((card for card in cards if not getattr(card, "parent", None)), None)
        if base is None:
            raise SwiftError(f"{self.api_url} serves no model (its /models list is empty)")
        self.model = base.id
        adapters = {card.id: getattr(card, "root", None) or card.id for card in cards
                    if getattr(card, "parent", None) == base.id}
        # Servers that do not say (plain vLLM) serve chat.
        self.template = Template("server-side", is_generation=not getattr(base, "is_chat", True))
        self.info = EngineInfo(base.id, getattr(base, "root", None) or base.id, f"remote {self.api_url}",
                               "server's", getattr(base, "max_model_len", None) or 0, adapters)
        self.default_config = default_config or RequestConfig()

    # ---- the engine interface ------------------------------------------------------------------------------
    def infer(self, requests: list[InferRequest], config: RequestConfig | None = None) -> list[InferResponse]:
        """One call per request, in order (the server batches concurrent clients, not this loop)."""
        responses = []
        for request in requests:
            kind, kwargs = self._call(request, config, stream=False)
            with self._server_errors():
                reply = self._endpoint(self.client, kind).create(**kwargs)
            choices = [Choice(c.index, _text(c, kind) or "", c.finish_reason) for c in reply.choices]
            usage = Usage(reply.usage.prompt_tokens, reply.usage.completion_tokens) if reply.usage else Usage()
            responses.append(InferResponse(choices, usage))
        return responses

    def infer_stream(self, request: InferRequest, config: RequestConfig | None = None) -> Iterator[StreamDelta]:
        kind, kwargs = self._call(request, config, stream=True)
        with self._server_errors(), self._endpoint(self.client, kind).create(**kwargs) as chunks:
            for chunk in chunks:  # leaving the `with` (also by close()) closes the response
                yield from _deltas(chunk, kind)

    async def infer_stream_async(self, request: InferRequest,
                                 config: RequestConfig | None = None) -> AsyncIterator[StreamDelta]:
        kind, kwargs = self._call(request, config, stream=True)
        with self._server_errors():
            async with await self._endpoint(self.async_client, kind).create(**kwargs) as chunks:
                async for chunk in chunks:
                    for delta in _deltas(chunk, kind):
                        yield delta

    # ---- requests ------------------------------------------------------------------------------------------
    def _call(self, request: InferRequest, config: RequestConfig | None, stream: bool) -> tuple[str, dict[str, Any]]:
        """('chat' | 'completions', the SDK's keyword arguments). Settings left None stay the server's."""
        if request.adapter is not None and request.adapter not in self.info.adapters:
            raise ArgumentError(f"unknown adapter {request.adapter!r}; the server has: {list(self.info.adapters)}")
        config = self._merged(config)
        if config.logprobs or config.prompt_logprobs is not None:
            raise ArgumentError("logprobs are not fetched from a remote server")
        kind = "completions" if request.prompt is not None else "chat"
        kwargs: dict[str, Any] = {"model": request.adapter or self.model, "stream": stream,
                                  "extra_body": openai_body(config, is_chat=kind == "chat")}
        if kind == "chat":
            kwargs["messages"] = request.messages
        else:
            kwargs["prompt"] = request.prompt
        if stream:
            kwargs["stream_options"] = {"include_usage": True}
        return kind, kwargs

    def _merged(self, config: RequestConfig | None) -> RequestConfig:
        """The request's settings over the defaults; stop words add up (as in the local engines)."""
        if config is None:
            return self.default_config
        stop = self.default_config.stop + [s for s in config.stop if s not in self.default_config.stop]
        return self.default_config.replace(**{**vars(config), "stop": stop})

    @staticmethod
    def _endpoint(client: OpenAI | AsyncOpenAI, kind: str) -> Any:
        return client.chat.completions if kind == "chat" else client.completions

    @contextmanager
    def _server_errors(self) -> Iterator[None]:
        """The SDK's exceptions as one readable line: the server's own message where it sent one."""
        try:
            yield
        except openai.APIConnectionError as e:
            raise ConnectionError(f"cannot reach {self.api_url} ({e}): is `swift deploy` running there?") from None
        except openai.APIStatusError as e:
            message = f"{self.api_url} answered {e.status_code}: {_server_message(e)}"
            raise (SwiftError(message) if e.status_code < 500 else RuntimeError(message)) from None
        except openai.APIError as e:  # an error chunk in the middle of a stream
            raise RuntimeError(f"{self.api_url}: {_server_message(e)}") from None


def _text(choice: Any, kind: str) -> str | None:
    if kind == "chat":
        return choice.delta.content if hasattr(choice, "delta") else choice.message.content
    return choice.text


def _deltas(chunk: Any, kind: str) -> Iterator[StreamDelta]:
    for choice in chunk.choices:
        text = _text(choice, kind) or ""
        if text or choice.finish_reason:
            yield StreamDelta(choice.index, text, choice.finish_reason)
    if chunk.usage is not None:
        yield StreamDelta(0, "", None, usage=Usage(chunk.usage.prompt_tokens, chunk.usage.completion_tokens))


def _server_message(e: openai.APIError) -> str:
    body = e.body
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return body["message"]
    return e.message
