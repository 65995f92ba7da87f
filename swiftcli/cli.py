"""The `swift` command. Each subcommand is one line: flags -> argument dataclass -> run_<cmd>(args)."""
from __future__ import annotations

import signal
import sys
import threading
from types import FrameType

import typer

import importlib
from collections.abc import Callable
from typing import Any

from .arguments import AppUIArguments, DeployArguments, ExportArguments, InferArguments, SftArguments
from .cli_args import command_from_dataclass
from .errors import SwiftError
from .log import setup_logging

app = typer.Typer(name="swift", help="Inference, serving, export and fine-tuning of LLMs, from one command.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

# name, arguments, runner ("module:function", imported on use so `swift --help` stays fast), help
COMMANDS = [
    ("infer", InferArguments, "infer:run_infer",
     "Chat with a model in the terminal (a pipe feeds it one query per line)."),
    ("deploy", DeployArguments, "server.deploy:run_deploy",
     "Serve a model behind an OpenAI-compatible API: chat, completions, LoRA adapters by name."),
    ("export", ExportArguments, "export:run_export",
     "Merge a LoRA into full weights, convert ms-swift LoRA checkpoints to peft, quantize."),
    ("app-ui", AppUIArguments, "app_ui:run_app_ui",
     "A web chat in the browser (gradio) over a model loaded here or a running `swift deploy`."),
    ("sft", SftArguments, "train:run_sft",
     "Fine-tune a model (LoRA or full) on datasets and self-cognition rows, into checkpoints that infer, deploy and "
     "export load."),
]


def lazy_runner(target: str) -> Callable[[Any], Any]:
    module, function = target.split(":")

    def run(args: Any) -> Any:
        if args.log_level:
            setup_logging(args.log_level)
        return getattr(importlib.import_module(f".{module}", __package__), function)(args)

    return run


for _name, _cls, _target, _help in COMMANDS:
    command_from_dataclass(app, _name, _cls, lazy_runner(_target), _help)


@app.command("list-models")
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
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="swift", standalone_mode=False)
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
