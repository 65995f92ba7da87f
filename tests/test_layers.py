"""The package's layering, read from the source: commands above shared layers, no command importing another, no
import cycle (lazy imports inside functions count: they are cycles that merely wait)."""
from __future__ import annotations

import ast
import pathlib

import swiftcli

ROOT = pathlib.Path(swiftcli.__file__).parent
COMMANDS = {"infer", "deploy", "export", "app_ui", "sft"}
"""Folders named after what the user runs."""
ENTRY_POINTS = {"cli", "__main__", "llm"}
"""May import commands: the `swift` entry point and the seed's Python API (`swiftcli.llm`)."""


def module_name(path: pathlib.Path) -> str:
    parts = ["swiftcli", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in ROOT.rglob("*.py")}


def imports(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The swiftcli modules `name` imports, anywhere in its body."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            for alias in node.names:
                target = f"{base}.{alias.name}"
                found.add(target if target in known else base)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports(name, path, set(mods)) for name, path in mods.items()}


def layer(name: str) -> str:
    """The command folder a module belongs to, 'entry' for the entry points, else 'shared'."""
    top = name.split(".")[1] if "." in name else ""
    if top in COMMANDS:
        return top
    return "entry" if top in ENTRY_POINTS else "shared"


def test_the_import_graph_is_read_from_the_source():
    edges = graph()
    assert "swiftcli.engine" in edges["swiftcli.infer"]  # the reader sees package imports
    assert "swiftcli.infer.repl" in edges["swiftcli.infer"]  # ... and `from .repl import`
    assert len(edges) > 40


def test_no_command_imports_another_and_shared_layers_import_no_command():
    wrong = [(a, b) for a, targets in graph().items() for b in targets
             if layer(a) != "entry" and layer(b) not in ("shared", layer(a))]
    assert wrong == []


def test_no_import_cycles():
    edges = graph()
    cycles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, path + [nxt])
        state[node] = 2

    for start in sorted(edges):
        if start not in state:
            visit(start, [start])
    assert cycles == []
