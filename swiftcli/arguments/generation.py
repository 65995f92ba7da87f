"""The generation group: the request settings the command line sets for every request (the REPL's, a dataset
run's, the server's and the UI's defaults). Its fields are RequestConfig's that declare a `flag`
(request_config.py): a new sampling parameter appears here without being typed again."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field, make_dataclass
from typing import Any

from ..errors import ArgumentError
from ..request_config import RequestConfig, flag_fields
from .base import Arguments, field_docs


def _flag_field(name: str, default: Any) -> tuple[Any, Any]:
    """(annotation, dataclass field) of the flag for RequestConfig's field `name`."""
    hint = typing.get_type_hints(RequestConfig)[name]
    if default is not None:  # a flag with a value of its own is never "unset"
        hint = next(a for a in typing.get_args(hint) if a is not type(None)) if typing.get_args(hint) else hint
    spec = RequestConfig.__dataclass_fields__[name]
    if spec.default_factory is not dataclasses.MISSING:
        return hint, field(default_factory=spec.default_factory)
    return hint, field(default=default)


_DOCS = field_docs(RequestConfig)
SamplingFlags = make_dataclass(
    "SamplingFlags", [(flag, *_flag_field(name, default)) for flag, name, default in flag_fields()],
    bases=(Arguments,), namespace={"__module__": __name__,
                                   "__field_docs__": {flag: _DOCS.get(name, "") for flag, name, _ in flag_fields()}})
SamplingFlags.__doc__ = "RequestConfig's fields that have a flag, named as the flag (max_tokens: --max_new_tokens)."


@dataclass
class GenerationArguments(SamplingFlags):
    seed: int = 42
    """Random seed; with the same seed sampling is reproducible."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.request_config()

    def request_config(self) -> RequestConfig:
        """The flags' settings (unset ones None: the model's generation_config decides). Raises ArgumentError naming
        the flag."""
        try:
            return RequestConfig(**{name: getattr(self, flag) for flag, name, _ in flag_fields()})
        except ArgumentError as e:
            flag = next((flag for flag, name, _ in flag_fields() if name == e.param), e.param)
            raise ArgumentError(f"--{flag}{str(e).removeprefix(e.param or '')}") from None
