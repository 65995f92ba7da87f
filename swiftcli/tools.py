"""Tool calls: what a request's `tools` and `tool_choice` ask of the model, and its reply read back as OpenAI's
`tool_calls` (vLLM's tool parsers, by the same names).

- `hermes`: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (Qwen2.5, Qwen3, Hermes; also what registered
  templates are given, through the system prompt, as ms-swift's default agent template does).
- `llama3_json`: a reply that is one JSON object `{"name": ..., "parameters": {...}}` (Llama-3.1/3.2), optionally
  after `<|python_tag|>`, several separated by `;`.
- `mistral`: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` (Mistral v0.3).

A reply a parser cannot read is returned as plain content, never an error. `tool_choice` "required" and a named
function are enforced by constrained decoding instead (the reply is JSON of the call's arguments), as vLLM does.
"""
from __future__ import annotations

import json
import re
import secrets
import string
import uuid
from dataclasses import dataclass
from typing import Any

from .errors import ArgumentError

PARSERS = ("hermes", "llama3_json", "mistral")


@dataclass
class ToolCall:
    name: str
    arguments: str
    """The arguments as a JSON string (OpenAI's shape)."""
    id: str = ""

    def as_openai(self) -> dict[str, Any]:
        return {"id": self.id, "type": "function", "function": {"name": self.name, "arguments": self.arguments}}


def detect_parser(chat_template: str | None) -> str:
    """The parser for the format a chat template writes tool calls in (hermes when it writes none)."""
    text = chat_template or ""
    if "[TOOL_CALLS]" in text:
        return "mistral"
    if "<|python_tag|>" in text or "Environment: ipython" in text:
        return "llama3_json"
    return "hermes"


def needs_special_tokens(parser: str) -> bool:
    """Whether the parser reads markers that tokenizers keep as special tokens (left out of text by default)."""
    return parser in ("mistral", "llama3_json")


def parse_tool_calls(parser: str, text: str) -> tuple[str | None, list[ToolCall]]:
    """(content before the calls or None, the calls); ([], the text as content) when there are none or they are
    malformed."""
    try:
        content, calls = {"hermes": _hermes, "llama3_json": _llama3_json, "mistral": _mistral}[parser](text)
    except (ValueError, TypeError, KeyError, AttributeError):
        return text, []
    if not calls:
        return text, []
    for call in calls:
        call.id = _mistral_id() if parser == "mistral" else f"chatcmpl-tool-{uuid.uuid4().hex}"
    return (content or None), calls


def _call(item: Any, arguments_key: str = "arguments") -> ToolCall:
    arguments = item.get(arguments_key, item.get("parameters", item.get("arguments", {})))
    if not isinstance(item["name"], str):
        raise TypeError("name")
    return ToolCall(item["name"], arguments if isinstance(arguments, str) else json.dumps(arguments,
                                                                                          ensure_ascii=False))


def _hermes(text: str) -> tuple[str, list[ToolCall]]:
    start = text.find("<tool_call>")
    if start < 0:
        return text, []
    blocks = re.findall(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", text[start:], re.DOTALL)
    return text[:start].strip(), [_call(json.loads(block)) for block in blocks]


def _llama3_json(text: str) -> tuple[str, list[ToolCall]]:
    body = text.strip().removeprefix("<|python_tag|>").strip()
    if not body.startswith("{"):
        return text, []
    return "", [_call(json.loads(part), "parameters") for part in body.split(";") if part.strip()]


def _mistral(text: str) -> tuple[str, list[ToolCall]]:
    start = text.find("[TOOL_CALLS]")
    if start < 0:
        return text, []
    items = json.loads(text[start + len("[TOOL_CALLS]"):].strip())
    return text[:start].strip(), [_call(item) for item in (items if isinstance(items, list) else [items])]


def _mistral_id() -> str:
    """Mistral's templates require 9 alphanumeric characters."""
    return "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(9))


# ---- tool_choice ------------------------------------------------------------------------------------------------
def check_tools(tools: list[dict[str, Any]] | None, tool_choice: Any) -> None:
    """OpenAI's and vLLM's rules for `tools` / `tool_choice`; a 400 naming the field otherwise."""
    if tools is not None and not tools:
        raise ArgumentError("tools must not be empty (leave it out instead)", param="tools")
    names = []
    for i, tool in enumerate(tools or []):
        function = tool.get("function") if isinstance(tool, dict) else None
        if tool.get("type") != "function" or not isinstance(function, dict) or not function.get("name"):
            raise ArgumentError(f"tools[{i}] must be {{'type': 'function', 'function': {{'name': ...}}}}",
                                param="tools")
        if function["name"] in names:
            raise ArgumentError(f"tools[{i}]: two tools are named {function['name']!r}", param="tools")
        names.append(function["name"])
        check_parameters(i, function.get("parameters"))
    if tool_choice in (None, "none"):
        return
    if not tools:
        raise ArgumentError("When using `tool_choice`, `tools` must be set.", param="tool_choice")
    if tool_choice in ("auto", "required"):
        return
    name = tool_choice.get("function", {}).get("name") if isinstance(tool_choice, dict) else None
    if name is None:
        raise ArgumentError(f"tool_choice must be none, auto, required or {{'type': 'function', 'function': "
                            f"{{'name': ...}}}}, got {tool_choice!r}", param="tool_choice")
    if name not in names:
        raise ArgumentError(f"tool_choice names {name!r}, which is not among the tools ({', '.join(names)})",
                            param="tool_choice")


def check_parameters(i: int, parameters: Any) -> None:
    """A function's `parameters` must be a JSON schema of an object that xgrammar compiles (it may constrain the
    reply), whatever the tool_choice of this request."""
    from .request_config import StructuredOutputs

    if parameters is None:
        return
    if not isinstance(parameters, dict):
        raise ArgumentError(f"tools[{i}].function.parameters must be a JSON schema object", param="tools")
    try:
        StructuredOutputs(json=parameters)
    except ArgumentError as e:
        raise ArgumentError(f"tools[{i}].function.parameters: {e}", param="tools") from None


def forced_schema(tools: list[dict[str, Any]], tool_choice: Any, parallel: bool) -> dict[str, Any] | None:
    """The JSON schema a reply must follow for tool_choice "required" (an array of calls) or a named function (its
    arguments); None for "auto" / "none"."""
    def parameters(tool: dict[str, Any]) -> dict[str, Any]:
        return tool["function"].get("parameters") or {"type": "object", "properties": {}}

    if isinstance(tool_choice, dict):
        name = tool_choice["function"]["name"]
        return parameters(next(t for t in tools if t["function"]["name"] == name))
    if tool_choice != "required":
        return None
    calls = [{"type": "object", "properties": {"name": {"type": "string", "enum": [t["function"]["name"]]},
                                               "parameters": parameters(t)},
              "required": ["name", "parameters"]} for t in tools]
    return {"type": "array", "minItems": 1, **({} if parallel else {"maxItems": 1}), "items": {"anyOf": calls}}


def forced_calls(tool_choice: Any, text: str) -> list[ToolCall]:
    """The calls of a reply made under `forced_schema` (its JSON is valid by construction)."""
    if isinstance(tool_choice, dict):
        calls = [ToolCall(tool_choice["function"]["name"], text)]
    else:
        calls = [ToolCall(item["name"], json.dumps(item["parameters"], ensure_ascii=False))
                 for item in json.loads(text)]
    for call in calls:
        call.id = f"chatcmpl-tool-{uuid.uuid4().hex}"
    return calls


# ---- rendering for registered templates ------------------------------------------------------------------------
HERMES_SYSTEM = ("\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided "
                 "with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\nFor each "
                 "function call, return a json object with function name and arguments within <tool_call></tool_call> "
                 "XML tags:\n<tool_call>\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n"
                 "</tool_call>")
"""Qwen2.5's own words for the tools (its chat template's), which registered templates get in the system prompt."""


def hermes_messages(messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None,
                    default_system: str | None) -> list[dict[str, Any]]:
    """OpenAI messages with tools, tool calls and tool results as plain system/user/assistant turns in the hermes
    format, for templates that know nothing of tools (Qwen2.5's rendering)."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = "".join(f"\n<tool_call>\n{json.dumps(_openai_call(c), ensure_ascii=False)}\n</tool_call>"
                            for c in m["tool_calls"])
            out.append({"role": "assistant", "content": (m.get("content") or "") + calls})
        elif m["role"] == "tool":
            response = f"<tool_response>\n{m.get('content') or ''}\n</tool_response>"
            if out and out[-1].get("tool_results"):
                out[-1]["content"] += "\n" + response
            else:
                out.append({"role": "user", "content": response, "tool_results": True})
        else:
            out.append(dict(m))
    for m in out:
        m.pop("tool_results", None)
    if tools:
        listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        if out[0]["role"] == "system":
            out[0] = {**out[0], "content": out[0]["content"] + HERMES_SYSTEM.format(tools=listing)}
        else:
            out.insert(0, {"role": "system", "content": (default_system or "") + HERMES_SYSTEM.format(tools=listing)})
    return out


def _openai_call(call: Any) -> dict[str, Any]:
    """An OpenAI tool call as {"name", "arguments" (an object)}; one a client sent malformed is a 400."""
    function = call.get("function", call) if isinstance(call, dict) else None
    arguments = function.get("arguments", {}) if isinstance(function, dict) else None
    try:
        arguments = json.loads(arguments) if isinstance(arguments, str) else arguments
    except ValueError:
        arguments = None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not isinstance(arguments, dict):
        raise ArgumentError(f"a tool call must be {{'id', 'type': 'function', 'function': {{'name': str, 'arguments': "
                            f"a JSON object as a string}}}}, got {call!r}"[:300], param="messages")
    return {"name": function["name"], "arguments": arguments}


def template_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Messages for a tokenizer's own chat template: tool call arguments as objects, not JSON strings (the official
    templates write them with `tojson`), as vLLM passes them."""
    out = []
    for m in messages:
        if m.get("tool_calls"):
            m = {**m, "tool_calls": [{**c, "function": _openai_call(c)} for c in m["tool_calls"]]}
        out.append(m)
    return out
