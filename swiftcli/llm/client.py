"""The seed's client functions (ms-swift 2.x names and signatures) over the official `openai` SDK.

Responses are the SDK's own types: `resp.choices[0].message.content` (chat), `.choices[0].text` (completions),
and with `stream=True` an iterator of chunks (`chunk.choices[0].delta.content` / `.text`). A server error raises
the SDK's `openai.APIStatusError` subclass, whose message carries the server's.
"""
from __future__ import annotations

import os
import typing
from dataclasses import MISSING, field, fields, make_dataclass
from typing import Any

from openai import AsyncOpenAI, AsyncStream, OpenAI, Stream
from openai.pagination import AsyncPage, SyncPage
from openai.types import Completion, Model
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from ..protocol import History, to_messages
from ..request_config import RequestConfig, openai_body


def _body(self: Any, is_chat: bool) -> dict[str, Any]:
    """The JSON fields to send: the settings changed from their defaults (`stream` goes to the SDK itself)."""
    return openai_body(self, is_chat)


XRequestConfig = make_dataclass(
    "XRequestConfig",
    [(f.name, typing.get_type_hints(RequestConfig)[f.name],
      field(default=f.default) if f.default_factory is MISSING else field(default_factory=f.default_factory))
     for f in fields(RequestConfig)] + [("stream", bool, field(default=False))],
    namespace={"body": _body, "__module__": __name__})
XRequestConfig.__doc__ = """Settings of one request: RequestConfig's fields (max_tokens, temperature, top_p, top_k,
repetition_penalty, n, seed, stop, logprobs, ...) and `stream`. Only fields changed from these defaults are sent,
so the server's defaults (the model's generation_config) decide the rest."""


def _base_url(host: str, port: int | str, url: str | None) -> str:
    return (url or f"http://{host}:{port}/v1").rstrip("/")


def _client_kwargs(host: str, port: int | str, url: str | None, api_key: str) -> dict[str, Any]:
    """No retries: a failed generation is reported, not silently run again. TIMEOUT (s) as in ms-swift."""
    return dict(api_key=api_key, base_url=_base_url(host, port, url), max_retries=0,
                timeout=float(os.environ.get("TIMEOUT", "1800")))


def get_model_list_client(host: str = "127.0.0.1", port: int | str = 8000, api_key: str = "EMPTY",
                          url: str | None = None) -> SyncPage[Model]:
    """The served models: `.data[i].id` (and `.is_chat` from swift deploy)."""
    with OpenAI(**_client_kwargs(host, port, url, api_key)) as client:
        return client.models.list()


async def get_model_list_client_async(host: str = "127.0.0.1", port: int | str = 8000, api_key: str = "EMPTY",
                                      url: str | None = None) -> AsyncPage[Model]:
    async with AsyncOpenAI(**_client_kwargs(host, port, url, api_key)) as client:
        return await client.models.list()


def _is_chat(models: list[Model], model_type: str) -> bool:
    """Servers that do not say (plain vLLM) serve chat."""
    for card in models:
        if card.id == model_type:
            return bool(getattr(card, "is_chat", True))
    raise ValueError(f"model {model_type!r} is not served here; served: {[card.id for card in models]}")


def _create_kwargs(model_type: str, query: str, history: History | None, system: str | None,
                   config: XRequestConfig, is_chat: bool, tools: list[dict[str, Any]] | None = None,
                   tool_choice: Any = None) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(model=model_type, stream=config.stream, extra_body=config.body(is_chat))
    if (tools or tool_choice) and not is_chat:
        raise ValueError("tools need a chat model")
    kwargs.update({k: v for k, v in (("tools", tools), ("tool_choice", tool_choice)) if v is not None})
    if is_chat:
        kwargs["messages"] = to_messages(query, history, system)
    elif history or system is not None:
        raise ValueError("a generation (non-chat) model takes a plain prompt: no history or system")
    else:
        kwargs["prompt"] = query
    return kwargs


def inference_client(model_type: str, query: str, history: History | None = None, system: str | None = None, *,
                     request_config: XRequestConfig | None = None, is_chat_request: bool | None = None,
                     host: str = "127.0.0.1", port: int | str = 8000, url: str | None = None,
                     api_key: str = "EMPTY", tools: list[dict[str, Any]] | None = None, tool_choice: Any = None
                     ) -> ChatCompletion | Completion | Stream[ChatCompletionChunk] | Stream[Completion]:
    """One query (with the seed's history of [query, response] pairs) to a `swift deploy` server.

    Chat or completion is decided by the server's /v1/models unless `is_chat_request` says. `tools` and
    `tool_choice` are OpenAI's (the reply's `message.tool_calls`).
    """
    config = request_config or XRequestConfig()
    client = OpenAI(**_client_kwargs(host, port, url, api_key))
    if is_chat_request is None:
        is_chat_request = _is_chat(client.models.list().data, model_type)
    create = client.chat.completions.create if is_chat_request else client.completions.create
    kwargs = _create_kwargs(model_type, query, history, system, config, is_chat_request, tools, tool_choice)
    if config.stream:
        return create(**kwargs)  # the stream holds the client and closes its response when done
    with client:
        return create(**kwargs)


async def inference_client_async(model_type: str, query: str, history: History | None = None,
                                 system: str | None = None, *, request_config: XRequestConfig | None = None,
                                 is_chat_request: bool | None = None, host: str = "127.0.0.1",
                                 port: int | str = 8000, url: str | None = None, api_key: str = "EMPTY",
                                 tools: list[dict[str, Any]] | None = None, tool_choice: Any = None
                                 ) -> ChatCompletion | Completion | AsyncStream[Any]:
    """`inference_client` for asyncio: a response, or with `stream=True` an async iterator of chunks."""
    config = request_config or XRequestConfig()
    client = AsyncOpenAI(**_client_kwargs(host, port, url, api_key))
    if is_chat_request is None:
        is_chat_request = _is_chat((await client.models.list()).data, model_type)
    create = client.chat.completions.create if is_chat_request else client.completions.create
    kwargs = _create_kwargs(model_type, query, history, system, config, is_chat_request, tools, tool_choice)
    if config.stream:
        return await create(**kwargs)
    async with client:
        return await create(**kwargs)
