"""The shapes of a reply: one JSON response or SSE chunks per format (chat, completions), and errors as OpenAI
words them. serving.py decides what to send; this module only writes it."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import ContextLengthError, SwiftError
from ..protocol import Choice, InferRequest, InferResponse, RequestConfig, StreamDelta
from ..template import Template
from .openai_protocol import ChatCompletionRequest, CompletionRequest
from .openai_responses import (
    ChatCompletionResponse,
    CompletionChoice,
    CompletionResponse,
    ErrorInfo,
    ErrorResponse,
    UsageInfo,
    chat_choice,
    chat_logprobs,
    completion_logprobs,
    echoed_logprobs,
    vllm_prompt_logprobs,
)
from .replies import ReplyReader, ToolUse, call_deltas

CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
_COMPACT = (",", ":")


class APIError(Exception):
    """An error the client receives as OpenAI's `{"error": {...}}` with this HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")  # it may quote a client's bad text
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
        return APIError(400, str(exc), param=getattr(exc, "param", None))
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
    continuous_usage: bool
    id: str
    start: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    usage: UsageInfo | None = None
    status: str = "200"


class ChunkWriter:
    """SSE lines of one stream. The constant head is serialized once; per token only the choice is encoded."""

    def __init__(self, job: Job, obj: str):
        head = json.dumps({"id": job.id, "object": obj, "created": int(time.time()), "model": job.model},
                          separators=_COMPACT)
        self.head = "data: " + head[:-1] + ',"choices":['

    def choice(self, choice: dict[str, Any], usage: UsageInfo | None = None) -> str:
        """usage: the usage so far on every chunk (vLLM's continuous_usage_stats)."""
        tail = "]}" if usage is None else f'],"usage":{usage.model_dump_json()}}}'
        return f"{self.head}{json.dumps(choice, ensure_ascii=False, separators=_COMPACT)}{tail}\n\n"

    def usage(self, usage: UsageInfo) -> str:
        return f'{self.head}],"usage":{usage.model_dump_json()}}}\n\n'

    @staticmethod
    def error(err: APIError) -> str:
        return f"data: {json.dumps(err.body(), ensure_ascii=False)}\n\n"


class ChatFormat:
    """Chat shapes. Every delta carries `content` as a string (the seed's clients print it unchecked); reasoning and
    tool calls are read from the reply as the template says (deploy/replies.py)."""

    chunk_object = "chat.completion.chunk"

    def __init__(self, request: ChatCompletionRequest, template: Template):
        self.n = request.n
        self.echo = request.echo_prefix
        """`echo`: the continued assistant message, in front of each reply (the opening delta carries it)."""
        tools = ToolUse(template.tool_parser, request.tool_choice or "auto") if request.calls_tools else None
        self.readers = [ReplyReader(template.reasoning_parser, tools) for _ in range(self.n)]

    def opening(self, i: int) -> list[dict[str, Any]]:
        return [{"index": k, "delta": {"role": "assistant", "content": self.echo}, "logprobs": None,
                 "finish_reason": None} for k in range(self.n)]

    def deltas(self, i: int, d: StreamDelta) -> list[dict[str, Any]]:
        """The chunks' choices for one engine delta: text as reasoning or content, and at the end of a reply its tool
        calls, then the finish reason."""
        reader = self.readers[d.index]
        fields = reader.feed(d.text)
        calls = []
        if d.finish_reason is not None:
            tail, calls = reader.finish()
            fields += tail + call_deltas(calls)
        logprobs = chat_logprobs(d.logprobs)
        if not fields and (logprobs or d.finish_reason):
            fields = [{"content": ""}]
        choices = [{"index": d.index, "delta": f, "logprobs": None, "finish_reason": None} for f in fields]
        if choices:
            choices[0]["logprobs"] = logprobs
            choices[-1]["finish_reason"] = "tool_calls" if calls else d.finish_reason
        return choices

    def response(self, job: Job, results: list[InferResponse]) -> ChatCompletionResponse:
        choices = []
        for c in results[0].choices:
            choice = chat_choice(c)
            reasoning, content, calls = self.readers[c.index].read(c.text)
            choice.message.reasoning_content = reasoning
            choice.message.content = self.echo + content if content is not None else (self.echo or None)
            choice.message.tool_calls = [call.as_openai() for call in calls]
            if calls:
                choice.finish_reason = "tool_calls"
            choices.append(choice)
        return ChatCompletionResponse(id=job.id, model=job.model, usage=job.usage, choices=choices,
                                      prompt_logprobs=vllm_prompt_logprobs(results[0].prompt_logprobs))


class CompletionFormat:
    """Legacy completions: choice index = prompt index * n + choice; `echo` puts the prompt first, and with
    `logprobs` the prompt tokens' logprobs too (the first token's is null, as in OpenAI and vLLM)."""

    chunk_object = "text_completion"

    def __init__(self, request: CompletionRequest, prompts: list[str], first_tokens: list[str]):
        """prompts: each prompt's text (token-id prompts decoded); first_tokens: each prompt's first token."""
        self.n, self.prompts, self.first_tokens, self.echo = request.n, prompts, first_tokens, request.echo
        self.echo_logprobs = request.echo_logprobs
        self.offsets: dict[int, int] = {}
        """Characters streamed so far per choice (logprobs' text_offset)."""
        self.prompt_logprobs: dict[int, Any] = {}
        """Per prompt: its tokens' logprobs, from the first delta (echo with logprobs)."""

    def _head(self, i: int) -> str:
        return self.prompts[i] if self.echo else ""

    def opening(self, i: int) -> list[dict[str, Any]]:
        if not self.echo or self.echo_logprobs:  # with logprobs the prompt goes out with its logprobs, below
            return []
        return [{"index": i * self.n + k, "text": self.prompts[i], "logprobs": None, "finish_reason": None}
                for k in range(self.n)]

    def deltas(self, i: int, d: StreamDelta) -> list[dict[str, Any]]:
        index = i * self.n + d.index
        if d.prompt_logprobs is not None:
            self.prompt_logprobs[i] = d.prompt_logprobs
        text, logprobs = d.text, d.logprobs
        if self.echo_logprobs and index not in self.offsets:  # this choice's first delta: the prompt first
            text = self.prompts[i] + text
            logprobs = echoed_logprobs(self.prompt_logprobs[i], self.first_tokens[i], d.logprobs)
        offset = self.offsets.get(index, 0 if self.echo_logprobs else len(self._head(i)))
        self.offsets[index] = offset + len(text)
        return [{"index": index, "text": text, "logprobs": completion_logprobs(logprobs, offset),
                 "finish_reason": d.finish_reason}]

    def _choice(self, i: int, c: Choice, result: InferResponse) -> CompletionChoice:
        logprobs = completion_logprobs(c.logprobs, len(self._head(i)))
        if self.echo_logprobs:
            logprobs = completion_logprobs(echoed_logprobs(result.prompt_logprobs, self.first_tokens[i], c.logprobs))
        return CompletionChoice(index=i * self.n + c.index, text=self._head(i) + c.text, finish_reason=c.finish_reason,
                                logprobs=logprobs, prompt_logprobs=vllm_prompt_logprobs(result.prompt_logprobs))

    def response(self, job: Job, results: list[InferResponse]) -> CompletionResponse:
        choices = [self._choice(i, c, result) for i, result in enumerate(results) for c in result.choices]
        return CompletionResponse(id=job.id, model=job.model, choices=choices, usage=job.usage)
