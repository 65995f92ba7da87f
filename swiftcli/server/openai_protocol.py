"""OpenAI's request and response shapes (pydantic). A request turns itself into our RequestConfig in one place.

Requests allow extra fields (OpenAI clients send many we do not use); the server logs the ignored ones.
"""
from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..protocol import Choice, RequestConfig, TokenLogprob, Usage


def random_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="allow")


# ---- requests ------------------------------------------------------------------------------------------------
class StreamOptions(OpenAIBaseModel):
    include_usage: bool = False
    """Send one more chunk before [DONE] with the usage of the whole request."""


class SamplingRequest(OpenAIBaseModel):
    """Fields shared by chat and completions. None means the server's default (the model's generation_config)."""

    model: str
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    n: int = 1
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    user: str | None = None

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def to_request_config(self) -> RequestConfig:
        """Raises ArgumentError (-> 400) for out-of-range values."""
        return self._request_config()

    def _request_config(self, **overrides: Any) -> RequestConfig:
        values = dict(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k,
                      repetition_penalty=self.repetition_penalty, presence_penalty=self.presence_penalty,
                      frequency_penalty=self.frequency_penalty, n=self.n, seed=self.seed,
                      stop=[] if self.stop is None else self.stop,
                      ignore_eos=self.ignore_eos)
        return RequestConfig(**{**values, **overrides})


class TextPart(OpenAIBaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(OpenAIBaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart] | None = None


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    """What current OpenAI SDKs send instead of max_tokens; it wins when both are given."""
    logprobs: bool | None = False
    top_logprobs: int | None = None

    def to_request_config(self) -> RequestConfig:
        max_tokens = self.max_tokens if self.max_completion_tokens is None else self.max_completion_tokens
        return self._request_config(max_tokens=max_tokens, logprobs=bool(self.logprobs),
                                    top_logprobs=self.top_logprobs)

    def message_dicts(self) -> list[dict[str, Any]]:
        return [m.model_dump(include={"role", "content"}) for m in self.messages]


class CompletionRequest(SamplingRequest):
    prompt: str | Annotated[list[str], Field(min_length=1)]
    echo: bool = False
    """Put the prompt in front of the generated text."""
    logprobs: int | None = None
    """Legacy completions: how many top logprobs per token (0: only the sampled token's)."""

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt

    def to_request_config(self) -> RequestConfig:
        return self._request_config(logprobs=self.logprobs is not None, top_logprobs=self.logprobs)


# ---- responses -----------------------------------------------------------------------------------------------
class UsageInfo(OpenAIBaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0

    @classmethod
    def of(cls, usages: list[Usage]) -> UsageInfo:
        prompt, completion = sum(u.prompt_tokens for u in usages), sum(u.completion_tokens for u in usages)
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


class ChatResponseMessage(OpenAIBaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatCompletionChoice(OpenAIBaseModel):
    index: int
    message: ChatResponseMessage
    finish_reason: str | None
    logprobs: dict[str, Any] | None = None


class ChatCompletionResponse(OpenAIBaseModel):
    id: str = Field(default_factory=lambda: random_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo


class CompletionChoice(OpenAIBaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: dict[str, Any] | None = None


class CompletionResponse(OpenAIBaseModel):
    id: str = Field(default_factory=lambda: random_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo


class ModelCard(OpenAIBaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    root: str
    parent: str | None = None
    max_model_len: int
    is_chat: bool
    is_multimodal: bool = False


class ModelList(OpenAIBaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorInfo(OpenAIBaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(OpenAIBaseModel):
    error: ErrorInfo


# ---- logprobs in OpenAI's two shapes (plain dicts: the streaming path builds them per token) ---------------------
def chat_logprobs(items: list[TokenLogprob] | None) -> dict[str, Any] | None:
    if items is None:
        return None

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    return {"content": [{**entry(t.token, t.logprob), "top_logprobs": [entry(s, v) for s, v in t.top]}
                        for t in items]}


def completion_logprobs(items: list[TokenLogprob] | None, offset: int = 0) -> dict[str, Any] | None:
    """`offset`: where this text starts in the choice's text (text_offset counts from there)."""
    if items is None:
        return None
    offsets = []
    for t in items:
        offsets.append(offset)
        offset += len(t.token)
    return {"tokens": [t.token for t in items], "token_logprobs": [t.logprob for t in items],
            "top_logprobs": [dict(t.top) for t in items], "text_offset": offsets}


def chat_choice(choice: Choice) -> ChatCompletionChoice:
    return ChatCompletionChoice(index=choice.index, message=ChatResponseMessage(content=choice.text),
                                finish_reason=choice.finish_reason, logprobs=chat_logprobs(choice.logprobs))
