"""`swift app-ui`'s arguments: an engine here (or a running server's URL) and the web page."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..errors import ArgumentError
from .base import Arguments, check_port
from .engine import EngineSetup


@dataclass
class UIArguments(Arguments):
    host: str = "127.0.0.1"
    """Address the web UI listens on. 127.0.0.1 keeps it on this machine; 0.0.0.0 opens it to the network."""
    port: int = 7860
    """TCP port of the web UI."""
    share: bool = False
    """Also publish the UI at a public gradio.live link (needs gradio's tunnel service to be reachable)."""
    api_url: str | None = None
    """Chat with a running `swift deploy` (or any OpenAI-compatible server) at this base URL, e.g.
    http://127.0.0.1:8000/v1, instead of loading a model here."""
    api_key: str | None = None
    """With --api_url: the key that server requires (its --api_key)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_port(self.port)
        if self.api_key is not None and not self.api_url:
            raise ArgumentError("--api_key goes with --api_url (the key of the server to chat with)")
        if self.api_url is not None and not self.api_url.startswith(("http://", "https://")):
            raise ArgumentError(f"--api_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got "
                                f"{self.api_url!r}")


@dataclass
class AppUIArguments(UIArguments, EngineSetup):
    serving: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        local = [name for name in ("model_type", "model_id_or_path", "ckpt_dir", "lora_modules") if getattr(self, name)]
        if self.api_url and local:
            raise ArgumentError(f"--api_url chats with the server's model: drop --{', --'.join(local)} (the server "
                                "chooses the model and its LoRA adapters)")
