"""Turn an argument dataclass into a typer command, accepting the spellings ms-swift users type.

`--model-type` = `--model_type`, `--flag=value`, booleans as `--merge_lora true|false` (a bare `--stream` means
true), lists as repeated values (`--model_name 小黄 'Xiao Huang'`), and `--config args.yaml` (the command line wins).
"""
from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from typing import Annotated, Any, Optional

import typer
from typer.core import TyperCommand

from .arguments.base import field_docs, load_config_file
from .errors import ArgumentError

_TRUE, _FALSE = ("true", "1", "yes", "y", "on"), ("false", "0", "no", "n", "off")


def parse_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ArgumentError(f"expected true or false, got {value!r}")


def _kind(tp: Any) -> tuple[str, type]:
    """('bool' | 'list' | 'scalar', python type) of a dataclass field annotation."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    base = args[0] if typing.get_origin(tp) in (typing.Union, getattr(__import__("types"), "UnionType")) else tp
    if base is bool:
        return "bool", bool
    if typing.get_origin(base) is list:
        return "list", typing.get_args(base)[0]
    return "scalar", base


class SwiftCommand(TyperCommand):
    """Normalises ms-swift spellings before click parses; knows which options take lists or booleans."""

    list_options: set[str] = set()
    bool_options: set[str] = set()

    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        if "--help" in args:  # answered before parsing: typer builds a (pydantic) converter for each option it parses
            typer.echo(self.get_help(ctx), color=ctx.color)
            ctx.exit()
        return super().parse_args(ctx, normalize_argv(args, self.list_options, self.bool_options))


def normalize_argv(args: list[str], list_options: set[str], bool_options: set[str]) -> list[str]:
    out: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        i += 1
        if not token.startswith("--") or token == "--":
            out.append(token)
            continue
        name, eq, value = token[2:].partition("=")
        name = name.replace("-", "_")
        flag = "--" + name
        if eq:
            out += [flag, value]
        elif name in list_options:
            values = []
            while i < len(args) and not args[i].startswith("--"):
                values.append(args[i])
                i += 1
            out += [x for v in values for x in (flag, v)] or [flag, ""]
        elif name in bool_options and (i == len(args) or args[i].startswith("--")):
            out += [flag, "true"]
        else:
            out.append(flag)
    return out


def command_from_dataclass(app: typer.Typer, name: str, cls: type, run: Callable[[Any], Any], help: str) -> None:
    """Register `swift <name>`: every field of `cls` becomes an option; the body builds `cls` and calls `run`."""
    docs = field_docs(cls)
    params = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    list_options, bool_options, kinds = set(), set(), {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        kind, tp = _kind(hints[f.name])
        kinds[f.name] = kind
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        option = typer.Option(f"--{f.name}", help=docs.get(f.name, ""), show_default=_show(default),
                              metavar={"bool": "BOOL", "list": "VALUE ..."}.get(kind))
        if kind == "list":
            list_options.add(f.name)
            annotation = Annotated[Optional[list[tp]], option]
        elif kind == "bool":
            bool_options.add(f.name)
            annotation = Annotated[Optional[str], option]
        else:
            annotation = Annotated[Optional[tp], option]
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation))
    params.append(inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=Annotated[
        Optional[str], typer.Option("--config", help="JSON or YAML file of arguments; the command line wins.")]))

    def command(ctx: typer.Context, **values: Any) -> Any:
        config_path = values.pop("config")
        given = {k: v for k, v in values.items() if v is not None}
        merged = dict(load_config_file(config_path)) if config_path else {}
        unknown = sorted(set(merged) - set(kinds))
        if unknown:
            raise ArgumentError(f"{config_path}: unknown argument(s) {', '.join(unknown)}")
        merged.update(given)
        kwargs = {k: _convert(k, v, kinds[k]) for k, v in merged.items()}
        return run(cls(**kwargs))

    command.__signature__ = inspect.Signature(params)
    command.__annotations__ = {p.name: p.annotation for p in params}
    command.__doc__ = help
    command.__name__ = name.replace("-", "_")
    cmd_cls = type(f"{cls.__name__}Command", (SwiftCommand,),
                   {"list_options": list_options, "bool_options": bool_options})
    app.command(name=name, cls=cmd_cls, help=help)(command)


def _convert(name: str, value: Any, kind: str) -> Any:
    if kind == "bool":
        try:
            return parse_bool(value)
        except ArgumentError:
            raise ArgumentError(f"--{name} expects true or false, got {value!r}") from None
    if kind == "list":
        items = value if isinstance(value, list) else [value]
        return [v for v in items if v != ""]
    return value


def _show(default: Any) -> str | bool:
    if default is None or default == []:
        return False
    return str(default).lower() if isinstance(default, bool) else str(default)
