"""`swift deploy`'s arguments: an engine and the HTTP server in front of it."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

from ..errors import ArgumentError
from .base import Arguments, check_port
from .engine import EngineSetup


@dataclass
class ServerArguments(Arguments):
    host: str = "127.0.0.1"
    """Address to listen on. 127.0.0.1 keeps the server on this machine; 0.0.0.0 opens it to the network."""
    port: int = 8000
    """TCP port."""
    api_key: str | None = None
    """Require `Authorization: Bearer <api_key>` on the /v1 routes (/health, /metrics and /version stay open)."""
    served_model_name: str | None = None
    """The base model's id in /v1/models and in requests' `model` (default: the model_type)."""
    owned_by: str = "swift"
    """`owned_by` of every /v1/models entry."""
    ssl_keyfile: str | None = None
    """TLS private key file (with --ssl_certfile: serve https)."""
    ssl_certfile: str | None = None
    """TLS certificate file."""
    max_concurrency: int | None = None
    """Most requests generating at once; the rest wait in line (default: no limit, the engine schedules)."""
    log_interval: float = 10
    """Seconds between throughput log lines (0: none)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_port(self.port)
        if self.api_key is not None and not self.api_key.strip():
            raise ArgumentError("--api_key must not be empty")
        if bool(self.ssl_keyfile) != bool(self.ssl_certfile):
            raise ArgumentError("--ssl_keyfile and --ssl_certfile go together")
        for name in ("ssl_keyfile", "ssl_certfile"):
            if getattr(self, name) and not os.path.isfile(getattr(self, name)):
                raise ArgumentError(f"--{name} {getattr(self, name)!r} does not exist")
        if self.max_concurrency is not None and self.max_concurrency < 1:
            raise ArgumentError(f"--max_concurrency must be >= 1, got {self.max_concurrency}")
        if self.log_interval < 0:
            raise ArgumentError(f"--log_interval must be >= 0, got {self.log_interval}")


@dataclass
class DeployArguments(ServerArguments, EngineSetup):
    serving: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.served_model_name is not None and self.served_model_name in self.adapters:
            raise ArgumentError(f"--served_model_name {self.served_model_name!r} is also a LoRA name: "
                                "each model id must be unique")
