"""Every command's arguments, composed from groups. The docstring under each field is its `--help` text.

Groups: model and template (model.py), generation (generation.py, RequestConfig's flags), engine and EngineSetup
(engine.py), dataset and evaluation (dataset.py), server (deploy.py), UI (app_ui.py), export, sft. A command's
dataclass names its groups; each group validates its own fields in its `__post_init__`. `None` / 'AUTO' mean
"not given": values restored from a checkpoint's `args.json` fill only those.

Names are imported from their module on first use, so `swift <cmd> --help` imports only that command's groups.
"""
from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "Arguments": "base", "field_docs": "base", "is_loopback": "base", "load_config_file": "base",
    "ModelArguments": "model", "TemplateArguments": "model", "GenerationArguments": "generation",
    "EngineArguments": "engine", "EngineSetup": "engine", "DatasetArguments": "dataset", "EvalArguments": "dataset",
    "METRICS": "dataset", "InferArguments": "infer", "ServerArguments": "deploy", "DeployArguments": "deploy",
    "UIArguments": "app_ui", "AppUIArguments": "app_ui", "ExportArguments": "export", "QUANT_METHODS": "export",
    "SftArguments": "sft", "world_size": "sft",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
