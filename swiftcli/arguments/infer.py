"""`swift infer`'s arguments: an engine, plus a dataset to evaluate on (else the REPL)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ..errors import ArgumentError
from ..request_config import RequestConfig, StructuredOutputs
from .base import check_choices
from .dataset import DatasetArguments, EvalArguments
from .engine import EngineSetup


@dataclass
class InferArguments(DatasetArguments, EvalArguments, EngineSetup):
    stream: bool = True
    """Print replies token by token."""
    response_format: str = "text"
    """text, json_object (every reply is a JSON object) or json_schema (every reply matches --json_schema):
    enforced by constrained decoding."""
    json_schema: str | None = None
    """The JSON schema every reply must match, inline or a .json file (implies --response_format json_schema)."""

    def request_config(self) -> RequestConfig:
        """The generation flags' settings, with the reply's format (checked here: the generation group's
        validation builds this config)."""
        config = super().request_config()
        if self.json_schema and self.response_format == "text":
            self.response_format = "json_schema"
        check_choices(self, {"response_format": ("text", "json_object", "json_schema")})
        if self.response_format == "json_schema" and not self.json_schema:
            raise ArgumentError("--response_format json_schema needs --json_schema <schema or file>")
        if self.json_schema and self.response_format != "json_schema":
            raise ArgumentError(f"--json_schema and --response_format {self.response_format} conflict: drop one")
        if self.response_format == "text":
            return config
        if self.response_format == "json_object":
            return config.replace(structured_outputs=StructuredOutputs(json_object=True))
        schema = self._schema()
        try:
            return config.replace(structured_outputs=StructuredOutputs(json=schema))
        except ArgumentError as e:
            raise ArgumentError(f"--json_schema: {e}") from None

    def _schema(self) -> dict:
        text = self.json_schema
        if text.endswith(".json") and not os.path.isfile(text):
            raise ArgumentError(f"--json_schema file {text} does not exist")
        if os.path.isfile(text):
            with open(text, encoding="utf-8") as f:
                text = f.read()
        try:
            schema = json.loads(text)
        except ValueError as e:
            raise ArgumentError(f"--json_schema is neither a JSON schema nor a JSON file: {e}") from None
        if not isinstance(schema, dict):
            raise ArgumentError("--json_schema must be a JSON object (a schema)")
        return schema
