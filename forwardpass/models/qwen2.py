"""`qwen2`: Qwen2 / Qwen2.5. The llama block with biases on the q, k and v projections, and NEOX RoPE."""

from __future__ import annotations

from typing import ClassVar

from .llama import LlamaLM


class Qwen2LM(LlamaLM):
    arch: ClassVar[str] = "qwen2"
    rope_neox: ClassVar[bool] = True
    qkv_bias: ClassVar[bool] = True
