"""The engine's data shapes: requests in, responses out. Both engines, the REPL, the server and the UI speak these."""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Literal, Union

from .errors import ArgumentError

Messages = list[dict[str, Any]]
History = list[list[str]]


@dataclass
class RequestConfig:
    """Sampling settings of one request. `None` means the model's generation_config decides."""

    max_tokens: int | None = None
    temperature: float | None = None
    """0 means greedy."""
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    n: int = 1
    logprobs: bool = False
    top_logprobs: int | None = None
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        checks = [
            (self.max_tokens is None or self.max_tokens >= 1, "max_tokens", "must be >= 1"),
            (self.temperature is None or 0 <= self.temperature <= 2, "temperature", "must be in [0, 2]"),
            (self.top_k is None or self.top_k >= -1, "top_k", "must be -1 or 0 (off) or >= 1"),
            (self.seed is None or 0 <= self.seed < 2**63, "seed", "must be in [0, 2**63)"),
            (self.top_p is None or 0 < self.top_p <= 1, "top_p", "must be in (0, 1]"),
            (self.repetition_penalty is None or self.repetition_penalty > 0, "repetition_penalty", "must be > 0"),
            (-2 <= self.presence_penalty <= 2, "presence_penalty", "must be in [-2, 2]"),
            (-2 <= self.frequency_penalty <= 2, "frequency_penalty", "must be in [-2, 2]"),
            (1 <= self.n <= 16, "n", "must be in [1, 16]"),
            (self.top_logprobs is None or 0 <= self.top_logprobs <= 20, "top_logprobs", "must be in [0, 20]"),
            (all(isinstance(s, str) and s for s in self.stop), "stop", "must be non-empty strings"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise ArgumentError(f"{name} {why}, got {getattr(self, name)!r}")

    def replace(self, **changes: Any) -> "RequestConfig":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update({k: v for k, v in changes.items() if v is not None})
        return RequestConfig(**values)


@dataclass
class InferRequest:
    """A chat (`messages`) or a raw completion (`prompt`, no template)."""

    messages: Messages | None = None
    prompt: str | None = None
    adapter: str | None = None
    """LoRA adapter name; None is the base model."""

    def __post_init__(self) -> None:
        if (self.messages is None) == (self.prompt is None):
            raise ArgumentError("a request needs exactly one of messages or prompt")
        if self.messages is not None:
            self.messages = normalize_messages(self.messages)
        elif not self.prompt:
            raise ArgumentError("prompt must not be empty")

    @classmethod
    def from_query(cls, query: str, history: History | None = None, system: str | None = None,
                   adapter: str | None = None) -> "InferRequest":
        return cls(messages=to_messages(query, history, system), adapter=adapter)


FinishReason = Literal["stop", "length", "abort"]


@dataclass
class TokenLogprob:
    token: str
    logprob: float
    top: list[tuple[str, float]] = field(default_factory=list)


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

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass
class InferResponse:
    choices: list[Choice]
    usage: Usage

    @property
    def text(self) -> str:
        return self.choices[0].text


@dataclass
class StreamDelta:
    """One step of a streamed choice: new text (valid UTF-8, never a broken character) and, at the end, why."""

    index: int
    text: str
    finish_reason: FinishReason | None = None
    logprobs: list[TokenLogprob] | None = None
    usage: Usage | None = None
    """Set on the last delta of the whole request."""


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


def normalize_messages(messages: Messages) -> Messages:
    """Check roles and order: [system], user, assistant, user, ..., ending with user (infer) or assistant (train)."""
    if not isinstance(messages, list) or not messages:
        raise ArgumentError("messages must be a non-empty list")
    out: Messages = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise ArgumentError(f"messages[{i}] must be an object with a role")
        role = m["role"]
        if role not in ("system", "user", "assistant"):
            raise ArgumentError(f"messages[{i}].role must be system, user or assistant, got {role!r}")
        if role == "system" and i != 0:
            raise ArgumentError(f"messages[{i}]: a system message must come first")
        out.append({"role": role, "content": content_text(m.get("content"))})
    turns = out[1:] if out[0]["role"] == "system" else out
    if not turns:
        raise ArgumentError("messages must contain a user message")
    for i, m in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if m["role"] != expected:
            raise ArgumentError(f"messages must alternate user/assistant; got {m['role']!r} where {expected!r} was expected")
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
