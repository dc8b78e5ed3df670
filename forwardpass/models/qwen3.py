"""`qwen3`: Qwen3 dense models. The llama block with per-head RMSNorm on q and k before RoPE, NEOX RoPE."""

from __future__ import annotations

from typing import ClassVar

from .llama import LlamaLM


class Qwen3LM(LlamaLM):
    arch: ClassVar[str] = "qwen3"
    rope_neox: ClassVar[bool] = True
    qk_norm: ClassVar[bool] = True
