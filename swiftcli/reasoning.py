"""Reasoning models: the `<think>...</think>` part of a reply as `reasoning_content`, the rest as `content`
(vLLM's reasoning parsers, by the same names).

- `qwen3`: the reply opens its reasoning with `<think>` itself (Qwen3, QwQ); a reply without it is all content
  (Qwen3 with `enable_thinking: false`).
- `deepseek_r1`: the generation prompt already opened `<think>` (DeepSeek-R1 and its distills); everything before
  `</think>` is reasoning, all of it when the reply never closes it (cut off while thinking).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

PARSERS = ("qwen3", "deepseek_r1")
START, END = "<think>", "</think>"


def detect_parser(chat_template: str | None, generation_prompt: Callable[[], str]) -> str | None:
    """The parser a chat template calls for: deepseek_r1 when its generation prompt (rendered only for templates
    that write think blocks) opens `<think>`, qwen3 when it writes them otherwise, None for a model that does not
    reason."""
    if not chat_template or START not in chat_template or END not in chat_template:
        return None
    return "deepseek_r1" if generation_prompt().rstrip().endswith(START) else "qwen3"


def split_reasoning(parser: str | None, text: str) -> tuple[str | None, str]:
    """(reasoning or None, content) of a whole reply."""
    splitter = ReasoningSplitter(parser)
    parts = splitter.feed(text) + splitter.finish()
    reasoning = "".join(t for kind, t in parts if kind == "reasoning")
    return (reasoning if splitter.reasoned else None), "".join(t for kind, t in parts if kind == "content")


@dataclass
class ReasoningSplitter:
    """Streaming: feed text deltas, get ("reasoning" | "content", text) parts; a tag split across deltas is held
    back until it is whole."""

    parser: str | None
    state: str = "start"
    """start (qwen3: is there a `<think>`?), reasoning, content."""
    held: str = ""
    reasoned: bool = False
    parts: list[tuple[str, str]] = field(default_factory=list)
    started: set[str] = field(default_factory=set)
    """The kinds that have emitted text (the newlines around the tags are not part of either)."""

    def __post_init__(self) -> None:
        if self.parser is None:
            self.state = "content"
        elif self.parser == "deepseek_r1":
            self.state, self.reasoned = "reasoning", True

    def feed(self, text: str) -> list[tuple[str, str]]:
        self.held += text
        self.parts = []
        while self.held and self._step():
            pass
        return self.parts

    def finish(self) -> list[tuple[str, str]]:
        """The end of the reply: what was held back is final."""
        self.parts = []
        if self.held:
            self._emit("content" if self.state == "start" else self.state, self.held)
            self.held = ""
        return self.parts

    def _step(self) -> bool:
        """Move what can be decided from `held` into parts; False when the rest must wait for more text."""
        if self.state == "start":
            stripped = self.held.lstrip()
            if stripped.startswith(START):
                self.held, self.state, self.reasoned = stripped[len(START):], "reasoning", True
                return True
            if START.startswith(stripped):
                return False
            self.state = "content"
            return True
        if self.state == "reasoning":
            if self.held.startswith(START):  # deepseek_r1 replies that repeat the opening tag
                self.held = self.held[len(START):]
            at = self.held.find(END)
            if at >= 0:
                self._emit("reasoning", self.held[:at])
                self.held, self.state = self.held[at + len(END):], "content"
                return True
            keep = _partial_suffix(self.held, END)
            self._emit("reasoning", self.held[:len(self.held) - keep])
            self.held = self.held[len(self.held) - keep:]
            return False
        self._emit("content", self.held)
        self.held = ""
        return False

    def _emit(self, kind: str, text: str) -> None:
        if kind not in self.started and (self.reasoned or kind == "reasoning"):
            text = text.lstrip("\n")
        if text:
            self.started.add(kind)
            self.parts.append((kind, text))


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a start of `tag` (it may be completed by the next delta)."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0
