"""The `swift` command. Each subcommand is one line: flags -> argument dataclass -> run_<cmd>(args)."""
from __future__ import annotations

import importlib
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import typer

from .cli_args import command_from_dataclass
from .errors import SwiftError
from .log import setup_logging

# name, arguments ("module:class"), runner ("module:function"), help. Both are imported only for the command that
# runs: `swift --help` lists the commands without importing a single argument class or library.
COMMANDS = [
    ("infer", "arguments.infer:InferArguments", "infer:run_infer",
     "Chat with a model in the terminal (a pipe feeds it one query per line)."),
    ("deploy", "arguments.deploy:DeployArguments", "deploy:run_deploy",
     "Serve a model behind an OpenAI-compatible API: chat, completions, LoRA adapters by name."),
    ("export", "arguments.export:ExportArguments", "export:run_export",
     "Merge a LoRA into full weights, convert ms-swift LoRA checkpoints to peft, quantize."),
    ("app-ui", "arguments.app_ui:AppUIArguments", "app_ui:run_app_ui",
     "A web chat in the browser (gradio) over a model loaded here or a running `swift deploy`."),
    ("sft", "arguments.sft:SftArguments", "sft:run_sft",
     "Fine-tune a model (LoRA or full) on datasets and self-cognition rows, into checkpoints that infer, deploy and "
     "export load."),
]


def load(target: str) -> Any:
    """"module:name" (relative to this package) -> the object."""
    module, name = target.split(":")
    return getattr(importlib.import_module(f".{module}", __package__), name)


def lazy_runner(target: str) -> Callable[[Any], Any]:
    def run(args: Any) -> Any:
        if args.log_level:
            setup_logging(args.log_level)
        return load(target)(args)

    return run


def build_app(invoked: str | None) -> typer.Typer:
    """The `swift` command with every subcommand listed, and only `invoked`'s flags built (from its dataclass)."""
    app = typer.Typer(name="swift", help="Inference, serving, export and fine-tuning of LLMs, from one command.",
                      no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                      rich_markup_mode=None)  # plain help: rendering it with rich costs more than all else
    for name, arguments, runner, help in COMMANDS:
        if name == invoked:
            command_from_dataclass(app, name, load(arguments), lazy_runner(runner), help)
        else:  # listed by name and help; never run (main builds the command it runs)
            app.command(name=name, help=help)(lambda: None)
    app.command("list-models")(list_models)
    return app


def list_models() -> None:
    """List the registered model types with their hub ids and templates."""
    from rich.console import Console
    from rich.table import Table

    from .registry import MODEL_MAPPING

    table = Table("model_type", "template", "ModelScope id", "Hugging Face id", "quant")
    for meta in MODEL_MAPPING.values():
        table.add_row(meta.model_type, meta.template, meta.ms_model_id or "", meta.hf_model_id or "",
                      meta.quant_method or "")
    Console().print(table)


def exit_on_signals() -> None:
    """SIGTERM and SIGHUP (a closed terminal) end a command as an error would, through `finally` blocks and atexit,
    so a vLLM engine's processes are stopped with it (their default action would orphan them). `swift deploy` and
    `swift app-ui` install their own handlers once they serve."""
    def handle(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():  # main() called from a thread (tests)
        return
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handle)


def main(argv: list[str] | None = None) -> None:
    """Entry point: user errors become one line on stderr and exit code 2, never a traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and not argv[0].startswith("-"):
        argv[0] = argv[0].replace("_", "-")  # ms-swift accepts app_ui and app-ui
    exit_on_signals()
    setup_logging()
    command, prog = typer.main.get_command(build_app(argv[0] if argv else None)), "swift"
    if argv and argv[0] in command.commands:  # the subcommand parses its own arguments (the group would only pass
        command, prog, argv = command.commands[argv[0]], f"swift {argv[0]}", argv[1:]  # them on, slower)
    try:
        code = command.main(args=argv, prog_name=prog, standalone_mode=False)
    except typer.Abort:
        raise SystemExit(130) from None
    except typer.TyperException as e:  # click's usage errors (typer vendors click)
        if getattr(e, "option_name", None):
            hint = f" Did you mean {e.possibilities[0]}?" if getattr(e, "possibilities", None) else ""
            print(f"swift: error: unknown flag {e.option_name}.{hint}", file=sys.stderr)
        else:
            print(f"swift: error: {e.format_message()}", file=sys.stderr)
        raise SystemExit(getattr(e, "exit_code", 2)) from None
    except SwiftError as e:
        print(f"swift: error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_code) from None
    raise SystemExit(code if isinstance(code, int) else 0)
