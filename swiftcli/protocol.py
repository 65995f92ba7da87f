"""The engine's data shapes: requests in (with a RequestConfig), responses out. Both engines, the REPL, the server
and the UI speak these."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Union

from .errors import ArgumentError
from .request_config import RequestConfig  # noqa: F401  (re-exported: the shapes a request is made of)

Messages = list[dict[str, Any]]
History = list[list[str]]


@dataclass
class InferRequest:
    """A chat (`messages`) or a raw completion (`prompt`, no template: text, or token ids as OpenAI allows)."""

    messages: Messages | None = None
    prompt: str | list[int] | None = None
    adapter: str | None = None
    """LoRA adapter name; None is the base model."""
    add_generation_prompt: bool = True
    """Open the assistant's turn after the messages (vLLM's field); after a final assistant message, a new turn."""
    continue_final_message: bool = False
    """Leave the final message open and continue it (vLLM's field; ms-swift's response prefix): a prefill."""
    tools: list[dict[str, Any]] | None = None
    """OpenAI's tool definitions, rendered into the prompt by the chat template (tools.py)."""
    chat_template_kwargs: dict[str, Any] | None = None
    """Extra variables of the model's own chat template, e.g. {"enable_thinking": false} (vLLM's field)."""

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ArgumentError("a request needs exactly one of messages or prompt")
        if self.messages is not None:
            self.messages = normalize_messages(self.messages)
        elif not self.prompt:
            raise ArgumentError("prompt must not be empty")
        elif isinstance(self.prompt, str):
            valid_text(self.prompt, "prompt", "prompt")
        elif isinstance(self.prompt, list) and not all(isinstance(i, int) and i >= 0 for i in self.prompt):
            raise ArgumentError("a prompt list must hold token ids (integers >= 0)")

    @classmethod
    def from_query(cls, query: str, history: History | None = None, system: str | None = None,
                   adapter: str | None = None) -> "InferRequest":
        return cls(messages=to_messages(query, history, system), adapter=adapter)


FinishReason = Literal["stop", "length", "abort"]


@dataclass
class TokenLogprob:
    token: str
    logprob: float | None
    """None only for a prompt's first token (nothing precedes it)."""
    top: list[tuple[str, float]] = field(default_factory=list)
    token_id: int | None = None
    rank: int | None = None
    """1 + how many tokens the model found likelier (set for prompt logprobs, as vLLM reports them)."""
    top_ids: list[int] = field(default_factory=list)
    """The token ids of `top`, in its order (prompt logprobs)."""


@dataclass
class Choice:
    index: int
    text: str
    finish_reason: FinishReason | None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[TokenLogprob] | None = None


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    """Prompt tokens whose KV cache was reused (vLLM's prefix cache; the pt engine has none)."""

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class InferResponse:
    choices: list[Choice]
    usage: Usage
    prompt_logprobs: list[TokenLogprob | None] | None = None
    """Per prompt token when RequestConfig.prompt_logprobs is set; the first is None (nothing precedes it)."""

    @property
    def text(self) -> str:
        return self.choices[0].text


@dataclass
class StreamDelta:
    """One step of a streamed choice, one per decoding step that produced tokens: their new text (valid UTF-8, never a
    broken character; empty when they show nothing yet: a skipped special token, the start of a character or of a
    stop string) and, at the end, why. Servers time the first token from the first delta."""

    index: int
    text: str
    finish_reason: FinishReason | None = None
    logprobs: list[TokenLogprob] | None = None
    usage: Usage | None = None
    """Set on the last delta of the whole request."""
    prompt_logprobs: list[TokenLogprob | None] | None = None
    """Set on the first delta of a request that asked for them (RequestConfig.prompt_logprobs)."""
    completion_tokens: int | None = None
    """Tokens this choice has generated so far (for streamed usage)."""


def content_text(content: Union[str, list, None]) -> str:
    """OpenAI content: a string or a list of text parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise ArgumentError("only text content parts are supported")
        return "".join(parts)
    raise ArgumentError(f"message content must be a string or a list of text parts, got {type(content).__name__}")


def valid_text(text: str, name: str, param: str) -> str:
    """`text` if it is valid Unicode. JSON (and Python) strings can hold lone surrogates ("\\ud800": half of a
    character outside the BMP), which no tokenizer encodes: the sender's error, found here rather than in the engine."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ArgumentError(f"{name} is not valid Unicode: a lone surrogate {text[e.start]!r} at character "
                            f"{e.start} (a character outside the BMP must be a surrogate pair)", param=param) from None
    return text


def normalize_messages(messages: Messages) -> Messages:
    """Check roles and order: [system], user, assistant, user, ..., ending with user (infer) or assistant (train).
    An assistant message may carry `tool_calls` (then its content may be empty); the `tool` messages answering them
    follow it, in the place of a user turn."""
    if not isinstance(messages, list) or not messages:
        raise ArgumentError("messages must be a non-empty list")
    out: Messages = []
    call_ids: list[str] = []  # of the last assistant message
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise ArgumentError(f"messages[{i}] must be an object with a role")
        role = m["role"]
        if role not in ("system", "user", "assistant", "tool"):
            raise ArgumentError(f"messages[{i}].role must be system, user or assistant (or tool, answering "
                                f"tool_calls), got {role!r}")
        if role == "system" and i != 0:
            raise ArgumentError(f"messages[{i}]: a system message must come first")
        if role == "tool" and not (out and (out[-1].get("tool_calls") or out[-1]["role"] == "tool")):
            raise ArgumentError(f"messages[{i}]: a tool message must answer an assistant message's tool_calls")
        if role == "tool" and m.get("tool_call_id") not in call_ids:
            raise ArgumentError(f"messages[{i}].tool_call_id {m.get('tool_call_id')!r} answers none of the calls "
                                f"before it ({', '.join(map(repr, call_ids))})")
        if role == "assistant":
            call_ids = [c.get("id") for c in m.get("tool_calls") or [] if isinstance(c, dict)]
        out.append({"role": role, "content": valid_text(content_text(m.get("content")), f"messages[{i}].content",
                                                        "messages")})
        for key in ("name", "tool_calls", "tool_call_id"):  # OpenAI's participant name, calls and their answers
            if m.get(key):
                out[-1][key] = m[key]
    body = out[1:] if out[0]["role"] == "system" else out
    turns = [m for k, m in enumerate(body) if not (m["role"] == "tool" and k and body[k - 1]["role"] == "tool")]
    if not turns:
        raise ArgumentError("messages must contain a user message")
    for i, m in enumerate(turns):  # a run of tool messages takes a user turn's place
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected and not (expected == "user" and m["role"] == "tool"):
            raise ArgumentError(f"messages must alternate user/assistant; got {m['role']!r} where {expected!r} was "
                                "expected")
    return out


def to_messages(query: str, history: History | None = None, system: str | None = None) -> Messages:
    """The seed's (query, history=[[q, r], ...], system) as OpenAI messages."""
    messages: Messages = [{"role": "system", "content": system}] if system is not None else []
    for q, r in history or []:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": r}]
    messages.append({"role": "user", "content": query})
    return messages


def to_history(messages: Messages) -> tuple[str | None, History]:
    """OpenAI messages (ending with an assistant turn) as (system, [[q, r], ...])."""
    system = messages[0]["content"] if messages and messages[0]["role"] == "system" else None
    turns = messages[1:] if system is not None else messages
    return system, [[turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns) - 1, 2)]
