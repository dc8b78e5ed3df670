"""`ServerConfig`: everything `forwardpass serve` takes on its command line, validated.

The engine's options (model, ctx, KV cache, batch limits, kernels) are one `EngineConfig` (`forwardpass/config.py`)
in `engine`, shared with `LLM`, `bench` and the other commands; the fields here are the HTTP server's own.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from .. import registry
from ..config import EngineConfig

DEFAULT_MAX_BODY = 2 * 1024 * 1024


@dataclass
class ServerConfig:
    """Everything `forwardpass serve` takes on its command line: the engine's options and the server's own."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: tuple[str, ...] = ()
    max_queue: int = 64
    cors_origins: tuple[str, ...] = ()
    shutdown_timeout: float = 30.0
    stall_timeout: float = 30.0
    max_body_bytes: int = DEFAULT_MAX_BODY
    root_path: str = ""
    served_model_name: str | None = None
    queue_timeout: float = 0.0  # seconds a request may wait for a slot before a 503; 0 = wait forever

    def __post_init__(self) -> None:
        if not isinstance(self.engine, EngineConfig):
            raise ValueError(f"engine must be an EngineConfig, got {self.engine!r}")
        checks = {
            "port": (self.port, 0, 65535),
            "max_queue": (self.max_queue, 0, 1 << 20),
            "max_body_bytes": (self.max_body_bytes, 1024, 1 << 31),
        }
        for name, (value, lo, hi) in checks.items():
            if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
                raise ValueError(f"{name} must be an integer in {lo}..{hi}, got {value!r}")
        for name in ("shutdown_timeout", "stall_timeout", "queue_timeout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < float("inf"):
                raise ValueError(f"{name} must be a number of seconds >= 0, got {value!r}")
        if any(not key for key in self.api_keys):
            raise ValueError("an API key must not be empty")

    @property
    def model_name(self) -> str:
        """The name /v1/models lists: the short name, or the file name without .gguf."""
        if self.served_model_name:
            return self.served_model_name
        model = self.engine.model or registry.DEFAULT_MODEL
        if model in registry.MODELS:
            return model
        base = os.path.basename(model)
        return base[:-5] if base.lower().endswith(".gguf") else base
