"""A chat reply as OpenAI's message: `reasoning_content` (reasoning models), `content`, `tool_calls`, for a whole
reply or delta by delta. Reasoning streams as it comes; with tools in play the content is held until the reply
ends (then it is either calls or text), and each call streams as vLLM streams it: id and name, then arguments."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..reasoning import ReasoningSplitter
from ..tools import ToolCall, forced_calls, parse_tool_calls


@dataclass
class ToolUse:
    """How this request's reply may hold tool calls: read by `parser` (tool_choice auto), or forced (required / a
    named function: the reply is the JSON that `tools.forced_schema` made it)."""

    parser: str
    tool_choice: Any = "auto"

    @property
    def forced(self) -> bool:
        return self.tool_choice == "required" or isinstance(self.tool_choice, dict)

    def calls(self, text: str) -> tuple[str | None, list[ToolCall]]:
        """(content, calls); a forced reply cut short (max_tokens) is no call: its text stays the content."""
        if not self.forced:
            return parse_tool_calls(self.parser, text)
        try:
            return None, forced_calls(self.tool_choice, text)
        except ValueError:
            return text, []


@dataclass
class ReplyReader:
    reasoning_parser: str | None
    tools: ToolUse | None
    splitter: ReasoningSplitter = field(init=False)
    held: str = ""

    def __post_init__(self) -> None:
        self.splitter = ReasoningSplitter(self.reasoning_parser)

    def read(self, text: str) -> tuple[str | None, str | None, list[ToolCall]]:
        """(reasoning_content, content, tool_calls) of a whole reply."""
        parts = self.splitter.feed(text) + self.splitter.finish()
        reasoning = "".join(t for kind, t in parts if kind == "reasoning") if self.splitter.reasoned else None
        content = "".join(t for kind, t in parts if kind == "content")
        if self.tools is None:
            return reasoning, content, []
        content, calls = self.tools.calls(content)
        return reasoning, content, calls

    def feed(self, text: str) -> list[dict[str, Any]]:
        """The delta fields for new text (maybe none)."""
        return self._deltas(self.splitter.feed(text))

    def finish(self) -> tuple[list[dict[str, Any]], list[ToolCall]]:
        """The delta fields of what was held back, and the tool calls, at the end of the reply."""
        deltas = self._deltas(self.splitter.finish())
        if self.tools is None or not self.held:
            return deltas, []
        content, calls = self.tools.calls(self.held)
        if content:
            deltas.append({"content": content})
        return deltas, calls

    def _deltas(self, parts: list[tuple[str, str]]) -> list[dict[str, Any]]:
        deltas = []
        for kind, text in parts:
            if kind == "reasoning":
                deltas.append({"reasoning_content": text, "content": ""})
            elif self.tools is not None:
                self.held += text
            else:
                deltas.append({"content": text})
        return deltas


def call_deltas(calls: list[ToolCall]) -> list[dict[str, Any]]:
    """Stream deltas of the calls, vLLM's way: the first names the call, the next carries its arguments."""
    deltas = []
    for i, call in enumerate(calls):
        deltas.append({"content": "", "tool_calls": [{"index": i, "id": call.id, "type": "function",
                                                      "function": {"name": call.name, "arguments": ""}}]})
        deltas.append({"content": "", "tool_calls": [{"index": i, "function": {"arguments": call.arguments}}]})
    return deltas
