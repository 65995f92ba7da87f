"""Row formats: one raw item (a dict from a file or hub dataset) -> a `Row` of OpenAI messages.

Each format is one function; `row_format` tells them apart per row (a file may mix them), and a row that can't be
used becomes a `Row` with an `error`, never a failed load.
"""
from __future__ import annotations

import ast
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import ArgumentError
from ..protocol import History, Messages, normalize_messages, to_history, to_messages

SHAREGPT_ROLES = {"system": "system", "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


@dataclass
class Row:
    """One conversation; `messages` ends with the label (the reply to learn, or to compare with) when it has one."""

    key: str
    """`<dataset>:<row index in it>`, the same in every run; `+n` marks the n-th extra copy of an upsampled row."""
    messages: Messages = field(default_factory=list)
    error: str | None = None
    """Why the row can't be used (then `messages` is empty)."""

    @property
    def label(self) -> str | None:
        return self.messages[-1]["content"] if self.messages and self.messages[-1]["role"] == "assistant" else None

    @property
    def prompt(self) -> Messages:
        """What the model answers: the messages before the label."""
        return self.messages[:-1] if self.label is not None else self.messages

    @property
    def query(self) -> tuple[str | None, str | None, History]:
        """(system, query, history): the prompt in ms-swift's shape, as results files record it."""
        if not self.messages:
            return None, None, []
        system, history = to_history(self.prompt)
        return system, self.prompt[-1]["content"], history


# ---- one format per function: a raw item -> messages (ArgumentError says what is wrong with it) ------------------
def _text(item: dict[str, Any], name: str, required: bool = False) -> str | None:
    value = item.get(name)
    if value is None and not required:
        return None
    if value is None:
        raise ArgumentError(f"`{name}` is missing")
    if not isinstance(value, str):
        raise ArgumentError(f"`{name}` must be a string, got {type(value).__name__}")
    return value


def _history(value: Any) -> History:
    """[[query, response], ...]; a string (how csv holds it) is parsed first."""
    if value is None:
        return []
    if isinstance(value, str):
        try:
            value = ast.literal_eval(value) if value.strip() else []
        except (ValueError, SyntaxError):
            raise ArgumentError("`history` is not a list of [query, response] pairs") from None
    if not isinstance(value, list) or not all(
            isinstance(pair, (list, tuple)) and len(pair) == 2 and all(isinstance(t, str) for t in pair)
            for pair in value):
        raise ArgumentError("`history` must be a list of [query, response] string pairs")
    return [list(pair) for pair in value]


def _with_reply(messages: Messages, reply: str | None) -> Messages:
    return messages + [{"role": "assistant", "content": reply}] if reply else messages


def from_swift(item: dict[str, Any]) -> Messages:
    """ms-swift: query, response, history, system."""
    messages = to_messages(_text(item, "query", required=True), _history(item.get("history")), _text(item, "system"))
    return _with_reply(messages, _text(item, "response"))


def from_alpaca(item: dict[str, Any]) -> Messages:
    """alpaca: instruction, input (on a new line after it), output, system, history (ms-swift's AlpacaPreprocessor)."""
    instruction, extra = _text(item, "instruction", required=True), _text(item, "input")
    query = f"{instruction}\n{extra}" if extra else instruction
    messages = to_messages(query, _history(item.get("history")), _text(item, "system"))
    return _with_reply(messages, _text(item, "output"))


def from_openai(item: dict[str, Any]) -> Messages:
    """OpenAI: messages [{role, content}, ...] (normalize_messages checks roles, order and content), system."""
    messages = item.get("messages")
    if not isinstance(messages, list):
        raise ArgumentError("`messages` must be a list of {role, content}")
    return _with_system(messages, _text(item, "system"))


def from_sharegpt(item: dict[str, Any]) -> Messages:
    """sharegpt: conversations [{from: human|gpt|system, value}, ...], system."""
    turns = item.get("conversations")
    if not isinstance(turns, list) or not all(isinstance(t, dict) for t in turns):
        raise ArgumentError("`conversations` must be a list of {from, value}")
    messages = []
    for turn in turns:
        if turn.get("from") not in SHAREGPT_ROLES:
            raise ArgumentError(f"`from` must be one of {', '.join(SHAREGPT_ROLES)}, got {turn.get('from')!r}")
        messages.append({"role": SHAREGPT_ROLES[turn["from"]], "content": turn.get("value")})
    return _with_system(messages, _text(item, "system"))


def from_conversation(item: dict[str, Any]) -> Messages:
    """ms-swift's other sharegpt: conversation [{human, assistant}, ...], system."""
    pairs = item.get("conversation")
    if isinstance(pairs, str):  # how csv holds it
        try:
            pairs = ast.literal_eval(pairs)
        except (ValueError, SyntaxError):
            pairs = None
    if not isinstance(pairs, list) or not pairs or not all(isinstance(p, dict) for p in pairs):
        raise ArgumentError("`conversation` must be a non-empty list of {human, assistant}")
    messages: Messages = []
    for i, pair in enumerate(pairs):
        human, assistant = pair.get("human"), pair.get("assistant")
        if not isinstance(human, str) or not (isinstance(assistant, str) or assistant is None and i == len(pairs) - 1):
            raise ArgumentError("`conversation` turns must be {human: text, assistant: text}")
        messages += [{"role": "user", "content": human}] + _with_reply([], assistant)
    return _with_system(messages, _text(item, "system"))


def _with_system(messages: Messages, system: str | None) -> Messages:
    """A row's top-level `system` as the first message; one that contradicts a system message is an error."""
    if system is None:
        return messages
    first = messages[0] if messages and isinstance(messages[0], dict) else {}
    if first.get("role") == "system":
        if first.get("content") != system:
            raise ArgumentError("`system` differs from the row's own system message: keep one of them")
        return messages
    return [{"role": "system", "content": system}] + messages


@dataclass(frozen=True)
class Format:
    """A row format: the keys that identify it (any one present and non-null) and every key it reads."""

    name: str
    keys: tuple[str, ...]
    fields: tuple[str, ...]
    convert: Callable[[dict[str, Any]], Messages]


FORMATS = [
    Format("messages (OpenAI)", ("messages",), ("messages", "system"), from_openai),
    Format("conversations (sharegpt)", ("conversations",), ("conversations", "system"), from_sharegpt),
    Format("conversation (sharegpt)", ("conversation",), ("conversation", "system"), from_conversation),
    Format("instruction/input/output (alpaca)", ("instruction",), ("instruction", "input", "output", "system",
                                                                     "history"), from_alpaca),
    Format("query/response (ms-swift)", ("query", "response"), ("query", "response", "history", "system"),
           from_swift),
]
"""Every row format, told apart per row: a file (or a hub dataset) may mix them."""
FORMAT_KEYS = {key for fmt in FORMATS for key in fmt.keys}
FORMAT_FIELDS = {key for fmt in FORMATS for key in fmt.fields}

_EXPECTED = ("expected query/response (ms-swift), messages (OpenAI), instruction/input/output (alpaca) or "
             "conversations / conversation (sharegpt)")


UNSUPPORTED_FIELDS = ("tools", "images", "videos", "audios")
"""ms-swift row fields for agents and multimodal models, which text-only rows here would silently lose."""


def row_format(item: dict[str, Any]) -> Format:
    """The format of one row, from the keys it holds (present and non-null: `datasets` gives every row of a file
    every column, null where the row had none). A format field the row's format does not read is an error, not
    silently dropped."""
    present = [key for key in item if key in FORMAT_FIELDS and item[key] is not None]
    matches = [fmt for fmt in FORMATS if set(fmt.keys) & set(present)]
    if not matches:
        held = [key for key, value in item.items() if value is not None]
        raise ArgumentError(f"no known format (keys: {', '.join(held) or 'none'}): {_EXPECTED}")
    if len(matches) > 1:
        raise ArgumentError(f"the row mixes formats: {' and '.join(f'`{m.keys[0]}`' for m in matches)}")
    fmt = matches[0]
    unsupported = [key for key in UNSUPPORTED_FIELDS if item.get(key) not in (None, "", "[]", [])]
    if unsupported:
        raise ArgumentError(f"{', '.join(f'`{k}`' for k in unsupported)}: agent and multimodal rows are not supported")
    unread = [key for key in present if key not in fmt.fields and item[key] not in ("", [])]
    if unread:
        raise ArgumentError(f"{', '.join(f'`{k}`' for k in unread)} is not a field of the {fmt.name} format "
                            f"(it reads {', '.join(fmt.fields)})")
    return fmt


def check_columns(columns: list[str], source: str) -> None:
    """A dataset none of whose columns names a format is refused whole (a wrong file, not bad rows)."""
    if not FORMAT_KEYS & set(columns):
        raise ArgumentError(f"dataset {source!r} has no known format (columns: {', '.join(columns) or 'none'}): "
                            f"{_EXPECTED}")


def to_row(key: str, item: dict[str, Any]) -> Row:
    try:
        messages = normalize_messages(row_format(item).convert(item))
        if messages[-1]["role"] == "assistant" and not messages[-1]["content"]:
            messages = messages[:-1]  # an empty reply is no label
        query = messages[-1] if messages[-1]["role"] == "user" else messages[-2]
        if not query["content"].strip():
            raise ArgumentError("the query is empty")
    except ArgumentError as e:
        return Row(key, error=str(e))
    return Row(key, messages)
