"""The interactive chat REPL of `swift infer` (ms-swift's commands and prompts), also fed line by line by a pipe."""
from __future__ import annotations

import json
import logging
import os
import sys
from dataclasses import dataclass, field
from typing import TextIO

from ..arguments import InferArguments
from ..engine import InferEngine
from ..errors import SwiftError
from ..protocol import History, InferRequest, RequestConfig
from ..reasoning import ReasoningSplitter
from .results import SEPARATOR, result_path

logger = logging.getLogger("swiftcli")
DIM, UNDIM = "\033[2m", "\033[0m"
COMMANDS = ("exit", "quit", "clear", "reset-system", "multi-line", "single-line")
HELP_LINES = [
    "Input `exit` or `quit` to exit the conversation.",
    "Input `multi-line` to switch to multi-line input mode (end the input with a line ending in `#`).",
    "Input `reset-system` to reset the system and clear the history.",
    "Input `clear` to clear the history.",
]


@dataclass
class ReplState:
    system: str | None = None
    history: History = field(default_factory=list)
    multi_line: bool = False
    reading_system: bool = False

    @property
    def prompt(self) -> str:
        tags = ("M" if self.multi_line else "") + ("S" if self.reading_system else "")
        return f"<<<[{tags}] " if tags else "<<< "


def read_input(state: ReplState, stdin: TextIO, tty: bool) -> str:
    """One query (or several lines up to one ending in '#' in multi-line mode). Raises EOFError at the end."""
    lines: list[str] = []
    prompt = state.prompt
    while True:
        if tty:
            line = input(prompt)
        else:
            line = stdin.readline()
            if not line:
                if lines:
                    return "\n".join(lines)
                raise EOFError
            line = line.rstrip("\n")
        line = replace_undecodable(line, getattr(stdin, "encoding", None) or "utf-8")
        if not state.multi_line or (not lines and line.strip().lower() in COMMANDS):
            return line  # commands work as a single line in multi-line mode too
        if line.endswith("#"):
            lines.append(line[:-1])
            return "\n".join(lines)
        lines.append(line)
        prompt = ""


def replace_undecodable(line: str, encoding: str) -> str:
    """A line read with errors='surrogateescape' (a terminal in another encoding, a cut multi-byte character): its
    undecodable bytes become U+FFFD, and the user is told."""
    try:
        fixed = line.encode(encoding, "surrogateescape").decode(encoding, "replace")
    except UnicodeEncodeError:  # a lone surrogate that no decoder made (text handed over as str)
        fixed = line.encode(encoding, "replace").decode(encoding)
    if fixed != line:
        print(f"warning: the input is not valid {encoding}: its undecodable bytes were replaced with U+FFFD (\ufffd)",
              file=sys.stderr, flush=True)
    return fixed


def run_repl(engine: InferEngine, args: InferArguments, stdin: TextIO | None = None,
             stdout: TextIO | None = None) -> int:
    """The chat loop; returns how many turns failed."""
    stdin, stdout = stdin or sys.stdin, stdout or sys.stdout
    tty = stdin.isatty()
    template = engine.template
    if tty:
        lines = HELP_LINES if template.support_multi_round else HELP_LINES[:3] + [
            "The current template only supports single-round dialogues."]
        print("\n".join(lines), file=sys.stderr)
    save_to = result_path(args) if args.save_result else None
    if hasattr(stdin, "reconfigure"):  # bytes that are not UTF-8 reach read_input as surrogates, not as a crash
        stdin.reconfigure(errors="surrogateescape")
    # No system message of our own: --system (or the one a checkpoint restores) is already the template's default,
    # so a query is rendered exactly as the training rows were (an explicit '' would render an empty system block).
    state, errors = ReplState(), 0
    while True:
        try:
            text = read_input(state, stdin, tty)
        except EOFError:
            if tty:
                print(file=stdout)
            return errors
        except KeyboardInterrupt:
            print(file=stdout)
            continue
        command = text.strip().lower()
        if state.reading_system:
            state.system, state.history, state.reading_system = (text or None), [], False
            continue
        if command in ("exit", "quit"):
            return errors
        if command == "clear":
            state.history = []
            continue
        if command == "reset-system":
            state.reading_system = True
            continue
        if command in ("multi-line", "single-line"):
            state.multi_line = command == "multi-line"
            continue
        if not text.strip():
            continue
        try:
            response = answer(engine, args, state, text, stdout)
        except KeyboardInterrupt:  # a second Ctrl-C while the first one is being handled
            response = None
        if response is None:
            errors += 1
            continue
        if save_to:
            save_turn(save_to, state, text, response)
        state.history = state.history + [[text, response]] if template.support_multi_round else []


def answer(engine: InferEngine, args: InferArguments, state: ReplState, query: str, stdout: TextIO) -> str | None:
    """Print the reply (streamed or whole; a reasoning model's thinking dimmed) and return its content (what the
    history keeps); None when it failed or was interrupted."""
    request = InferRequest.from_query(query, state.history, state.system, adapter=args.default_adapter)
    splitter = ReasoningSplitter(engine.template.reasoning_parser)
    parts: list[str] = []
    try:
        if args.stream:
            stream = engine.infer_stream(request, RequestConfig())
            try:
                for delta in stream:
                    show(splitter, splitter.feed(delta.text), parts, stdout)
            finally:
                stream.close()  # aborts the generation when interrupted
        else:
            show(splitter, splitter.feed(engine.infer([request], RequestConfig())[0].text), parts, stdout)
        show(splitter, splitter.finish(), parts, stdout)
    except KeyboardInterrupt:
        print(f"\n{SEPARATOR}", file=stdout, flush=True)
        return None
    except SwiftError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return None
    print(f"\n{SEPARATOR}", file=stdout, flush=True)
    return "".join(parts)


def show(splitter: ReasoningSplitter, pieces: list[tuple[str, str]], content: list[str], stdout: TextIO) -> None:
    """Print ("reasoning" | "content", text) pieces, the reasoning dimmed on a terminal and a line between it and
    the answer; collect the content."""
    for kind, text in pieces:
        if kind == "reasoning":
            print(f"{DIM}{text}{UNDIM}" if stdout.isatty() else text, end="", flush=True, file=stdout)
            continue
        if not content and splitter.reasoned:
            print(file=stdout)
        content.append(text)
        print(text, end="", flush=True, file=stdout)


def save_turn(path: str, state: ReplState, query: str, response: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps({"system": state.system, "query": query, "response": response, "history": state.history},
                           ensure_ascii=False) + "\n")
