"""What every argument group shares: the base class, field docs as `--help`, the `--config` file reader and the
small checks the groups repeat."""
from __future__ import annotations

import ast
import functools
import inspect
import ipaddress
import json
import os
from dataclasses import dataclass, fields
from typing import Any

from ..errors import ArgumentError


@dataclass
class Arguments:
    """The base of every group. Each group's `__post_init__` first calls `super()`'s, then checks its own fields, so
    a command composed of groups runs every group's checks once, from its last base to its first: `class
    DeployArguments(ServerArguments, EngineSetup)` checks the model (and restores a checkpoint's args.json) before
    the server. That is also the order of the fields, and of the flags in `--help`."""

    log_level: str | None = None
    """DEBUG, INFO, WARNING or ERROR (default: env SWIFT_LOG_LEVEL, else INFO). DEBUG shows everything, vLLM's own
    log included; otherwise vLLM logs only warnings a user can act on."""

    def __post_init__(self) -> None:
        pass

    def saved_args(self) -> dict[str, Any]:
        """Every argument, as a checkpoint's args.json records them."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def check_choices(args: Any, choices: dict[str, tuple[Any, ...]]) -> None:
    for name, allowed in choices.items():
        if getattr(args, name) not in allowed:
            raise ArgumentError(f"--{name} must be one of {', '.join(map(str, allowed))}, got {getattr(args, name)!r}")


def check_ranges(args: Any, checks: list[tuple[str, bool]]) -> None:
    for name, ok in checks:
        if not ok:
            raise ArgumentError(f"--{name} is out of range: {getattr(args, name)!r}")


def check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise ArgumentError(f"--port must be in 1..65535, got {port}")


def is_loopback(host: str) -> bool:
    """Whether --host keeps a server on this machine (a host name may resolve to anything: False)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """Attribute docstrings (the string literal right under a field), through the class hierarchy; a class made by
    `make_dataclass` brings its own in `__field_docs__`."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object or not hasattr(klass, "__dataclass_fields__"):
            continue
        docs.update(vars(klass).get("__field_docs__") or _source_docs(klass))
    return docs


@functools.cache
def _source_docs(klass: type) -> dict[str, str]:
    docs = {}
    body = ast.parse(inspect.getsource(klass)).body[0].body
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def json_object_flag(flag: str, text: str | None) -> dict[str, Any]:
    """A flag whose value is a JSON object (`--vllm_engine_kwargs`, `--chat_template_kwargs`); {} when unset."""
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ArgumentError(f"--{flag} is not valid JSON: {e}") from None
    if not isinstance(value, dict):
        raise ArgumentError(f"--{flag} must be a JSON object, got {text!r}")
    return value


def load_config_file(path: str) -> dict[str, Any]:
    """A JSON or YAML file of arguments (`--config args.yaml`)."""
    if not os.path.isfile(path):
        raise ArgumentError(f"config file {path!r} does not exist")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:
        raise ArgumentError(f"cannot parse {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise ArgumentError(f"{path} must hold a mapping of argument names to values")
    return data
