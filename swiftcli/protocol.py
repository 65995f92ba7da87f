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
    """Ignore the model's end-of-turn ids and stop words (not the request's own `stop`/`stop_token_ids`)."""
    stop_token_ids: list[int] = field(default_factory=list)
    """Token ids that end a reply, on top of the model's own (vLLM's field)."""
    min_tokens: int = 0
    """No stop (id or string) before this many tokens (vLLM's field)."""
    logit_bias: dict[int, float] = field(default_factory=dict)
    """Added to these token ids' logits before sampling (OpenAI's field: -100 bans, 100 forces)."""
    prompt_logprobs: int | None = None
    """Logprob of every prompt token (the first has none) with this many top alternatives; None: off."""

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
            (all(isinstance(i, int) and i >= 0 for i in self.stop_token_ids), "stop_token_ids",
             "must be token ids (integers >= 0)"),
            (self.min_tokens >= 0, "min_tokens", "must be >= 0"),
            (self.max_tokens is None or self.min_tokens <= self.max_tokens, "min_tokens",
             f"must be <= max_tokens ({self.max_tokens})"),
            (all(isinstance(i, int) and i >= 0 for i in self.logit_bias), "logit_bias", "keys must be token ids"),
            (all(-100 <= v <= 100 for v in self.logit_bias.values()), "logit_bias", "values must be in [-100, 100]"),
            (self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= 20, "prompt_logprobs", "must be in [0, 20]"),
            (self.n == 1 or self.temperature != 0, "n", "must be 1 when using greedy sampling (temperature 0)"),
        ]
        for ok, name, why in checks:
            if not ok:
                raise ArgumentError(f"{name} {why}, got {getattr(self, name)!r}", param=name)

    def replace(self, **changes: Any) -> "RequestConfig":
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update({k: v for k, v in changes.items() if v is not None})
        return RequestConfig(**values)


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
    """One step of a streamed choice: new text (valid UTF-8, never a broken character) and, at the end, why."""

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
        out.append({"role": role, "content": valid_text(content_text(m.get("content")), f"messages[{i}].content",
                                                        "messages")})
        if m.get("name"):  # OpenAI's participant name, for chat templates that write it
            out[-1]["name"] = m["name"]
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
