"""`ServerConfig`: everything `forwardpass serve` takes on its command line, validated."""
from __future__ import annotations

import os
from dataclasses import dataclass

from .. import registry

DEFAULT_MAX_BODY = 2 * 1024 * 1024


@dataclass
class ServerConfig:
    """Everything `forwardpass serve` takes on its command line."""

    model: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    api_keys: tuple[str, ...] = ()
    ctx: int | None = None
    max_num_seqs: int = 32
    max_queue: int = 64
    threads: int | None = None
    device: str = "cpu"
    cpu: str | None = None  # CPU kernels (kernels.native.select_kernels); None: $FORWARDPASS_CPU, else auto
    cors_origins: tuple[str, ...] = ()
    shutdown_timeout: float = 30.0
    stall_timeout: float = 30.0
    max_body_bytes: int = DEFAULT_MAX_BODY
    root_path: str = ""
    served_model_name: str | None = None
    kv_tokens: int | None = None
    kv_memory: int | None = None  # bytes; instead of kv_tokens
    max_num_batched_tokens: int = 512  # tokens one engine step computes: the prefill chunk size
    queue_timeout: float = 0.0  # seconds a request may wait for a slot before a 503; 0 = wait forever

    def __post_init__(self) -> None:
        checks = {"port": (self.port, 0, 65535), "max_num_seqs": (self.max_num_seqs, 1, 1 << 16),
                  "max_num_batched_tokens": (self.max_num_batched_tokens, 1, 1 << 20),
                  "max_queue": (self.max_queue, 0, 1 << 20), "max_body_bytes": (self.max_body_bytes, 1024, 1 << 31)}
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
        model = self.model or registry.DEFAULT_MODEL
        if model in registry.MODELS:
            return model
        base = os.path.basename(model)
        return base[:-5] if base.lower().endswith(".gguf") else base
