"""OpenAI's response shapes (pydantic), and logprobs in OpenAI's and vLLM's shapes. Requests: openai_protocol.py."""
from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import Field

from ..protocol import Choice, TokenLogprob, Usage
from .openai_protocol import OpenAIBaseModel, random_id


# ---- responses -----------------------------------------------------------------------------------------------
class PromptTokensDetails(OpenAIBaseModel):
    cached_tokens: int = 0


class UsageInfo(OpenAIBaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)

    @classmethod
    def of(cls, usages: list[Usage]) -> UsageInfo:
        prompt, completion = sum(u.prompt_tokens for u in usages), sum(u.completion_tokens for u in usages)
        details = PromptTokensDetails(cached_tokens=sum(u.cached_tokens for u in usages))
        return cls(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                   prompt_tokens_details=details)


class ChatResponseMessage(OpenAIBaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    reasoning_content: str | None = None
    """A reasoning model's thinking (vLLM's field), apart from the answer in `content`."""
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)


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
    prompt_logprobs: list[dict[str, Any] | None] | None = None


class CompletionChoice(OpenAIBaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: dict[str, Any] | None = None
    prompt_logprobs: list[dict[str, Any] | None] | None = None


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
    """`offset`: where this text starts in the choice's text (text_offset counts from there). A token without a
    logprob (an echoed prompt's first) has null top_logprobs too."""
    if items is None:
        return None
    offsets = []
    for t in items:
        offsets.append(offset)
        offset += len(t.token)
    return {"tokens": [t.token for t in items], "token_logprobs": [t.logprob for t in items],
            "top_logprobs": [None if t.logprob is None else dict(t.top) for t in items], "text_offset": offsets}


def echoed_logprobs(prompt: list[TokenLogprob | None], first_token: str,
                    generated: list[TokenLogprob] | None) -> list[TokenLogprob]:
    """An echoed prompt's tokens then the generated ones; the first prompt token has no logprob (vLLM, OpenAI)."""
    return [TokenLogprob(first_token, None), *prompt[1:], *(generated or [])]  # type: ignore[list-item]


def vllm_prompt_logprobs(items: list[TokenLogprob | None] | None) -> list[dict[str, Any] | None] | None:
    """vLLM's `prompt_logprobs`: per prompt token {token id: {logprob, rank, decoded_token}}, the first None."""
    if items is None:
        return None
    out: list[dict[str, Any] | None] = []
    for t in items:
        if t is None:
            out.append(None)
            continue
        entry = {str(i): {"logprob": v, "rank": rank, "decoded_token": s}
                 for rank, (i, (s, v)) in enumerate(zip(t.top_ids, t.top), start=1)}
        entry[str(t.token_id)] = {"logprob": t.logprob, "rank": t.rank, "decoded_token": t.token}
        out.append(entry)
    return out


def chat_choice(choice: Choice) -> ChatCompletionChoice:
    return ChatCompletionChoice(index=choice.index, message=ChatResponseMessage(content=choice.text),
                                finish_reason=choice.finish_reason, logprobs=chat_logprobs(choice.logprobs))
