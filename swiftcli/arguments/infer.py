"""`swift infer`'s arguments: an engine, plus a dataset to evaluate on (else the REPL)."""
from __future__ import annotations

from dataclasses import dataclass

from .dataset import DatasetArguments, EvalArguments
from .engine import EngineSetup


@dataclass
class InferArguments(DatasetArguments, EvalArguments, EngineSetup):
    stream: bool = True
    """Print replies token by token."""
