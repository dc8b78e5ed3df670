"""`gemma3`: Gemma 3 text models.

Differences from llama: embeddings scaled by sqrt(d_model); RMSNorm before and after both the attention and the
feed-forward ("sandwich" norms; the GGUF converter already folded Gemma's 1 + w into the weights); per-head
RMSNorm of q and k; GELU-tanh gated feed-forward; local sliding-window layers (RoPE base 10k) interleaved with
global layers (the file's RoPE base), five local to one global unless the file says otherwise; optional final
logit soft-capping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import GGUFError
from ..gguf.weights import QuantWeight, WeightStore
from ..kernels.native_decoder import LayerSpec
from .attention import AttentionMetadata, KVCache
from .base import DecoderLM
from .config import MetadataView, ModelConfig, vocab_size_of
from .layers import gelu_tanh_mul, rms_norm
from .llama import LlamaLayer

SWA_PERIOD = 6  # llama.cpp's and transformers' default: every sixth layer is global
LOCAL_ROPE_BASE = 10_000.0


@dataclass(kw_only=True)
class Gemma3Layer(LlamaLayer):
    """The llama layer (q_norm and k_norm always set) with norms after the attention and the feed-forward."""

    post_attn_norm: torch.Tensor
    post_ffn_norm: torch.Tensor

    def spec(self, act: str) -> LayerSpec:
        return replace(super().spec(act), post_attn_norm=self.post_attn_norm, post_ffn_norm=self.post_ffn_norm)


def _local_layers(m: MetadataView, n_layers: int) -> list[bool]:
    pattern = m.raw("attention.sliding_window_pattern")
    if pattern is None:
        return [(i + 1) % SWA_PERIOD != 0 for i in range(n_layers)]
    if isinstance(pattern, int) and not isinstance(pattern, bool) and pattern > 0:
        return [(i + 1) % pattern != 0 for i in range(n_layers)]
    if isinstance(pattern, np.ndarray) and pattern.shape == (n_layers,):
        return [bool(b) for b in pattern]
    raise GGUFError(f"gemma3.attention.sliding_window_pattern has an unexpected value {pattern!r}")


class Gemma3LM(DecoderLM):
    arch: ClassVar[str] = "gemma3"
    rope_neox: ClassVar[bool] = True

    @classmethod
    def config_from_metadata(cls, metadata: dict[str, Any]) -> ModelConfig:
        m = MetadataView(metadata, cls.arch)
        n_layers, d_model, n_heads = m.int("block_count"), m.int("embedding_length"), m.int("attention.head_count")
        head_dim = m.int("attention.key_length", 256)
        window = m.int("attention.sliding_window", 0)
        local = _local_layers(m, n_layers) if window else [False] * n_layers
        global_base = m.float("rope.freq_base", 1_000_000.0)
        local_base = m.float("rope.freq_base_swa", LOCAL_ROPE_BASE)
        global_scale = m.float("rope.scaling.factor", 1.0) if m.raw("rope.scaling.type") == "linear" else 1.0
        # llama.cpp: 1/sqrt(n_embd / n_head) for the 27B model (62 layers), 1/sqrt(head_dim) for the others
        query_scalar = d_model / n_heads if n_layers == 62 else head_dim
        return ModelConfig(
            arch=cls.arch,
            n_layers=n_layers,
            d_model=d_model,
            n_ff=m.int("feed_forward_length"),
            n_heads=n_heads,
            n_kv_heads=m.int("attention.head_count_kv", n_heads),
            head_dim=head_dim,
            vocab_size=vocab_size_of(metadata, cls.arch),
            context_length=m.int("context_length"),
            rms_eps=m.float("attention.layer_norm_rms_epsilon", 1e-6),
            rope_dims=m.int("rope.dimension_count", head_dim),
            sliding_window=tuple(window if is_local else 0 for is_local in local),
            rope_bases=tuple(local_base if is_local else global_base for is_local in local),
            rope_scales=tuple(1.0 if is_local else global_scale for is_local in local),
            attn_scale=1.0 / math.sqrt(query_scalar),
            embed_scale=math.sqrt(d_model),
            final_logit_softcap=m.float("final_logit_softcapping", 0.0),
        )

    def load_layer(self, store: WeightStore, i: int) -> Gemma3Layer:
        c, p = self.config, f"blk.{i}."
        q_out, kv_out = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim

        def weight(name: str, out: int, inp: int) -> QuantWeight:
            return store.get(p + name + ".weight", (out, inp))

        def norm(name: str, size: int = c.d_model) -> torch.Tensor:
            return self.norm(store, p + name + ".weight", size)

        return Gemma3Layer(
            attn_norm=norm("attn_norm"),
            wqkv=self.multi_linear(
                [
                    weight("attn_q", q_out, c.d_model),
                    weight("attn_k", kv_out, c.d_model),
                    weight("attn_v", kv_out, c.d_model),
                ]
            ),
            wo=self.linear(weight("attn_output", c.d_model, q_out)),
            q_norm=norm("attn_q_norm", c.head_dim),
            k_norm=norm("attn_k_norm", c.head_dim),
            post_attn_norm=norm("post_attention_norm"),
            ffn_norm=norm("ffn_norm"),
            w_gate_up=self.multi_linear([weight("ffn_gate", c.n_ff, c.d_model), weight("ffn_up", c.n_ff, c.d_model)]),
            w_down=self.linear(weight("ffn_down", c.d_model, c.n_ff)),
            post_ffn_norm=norm("post_ffw_norm"),
        )

    def decoder_layer(self, i: int) -> LayerSpec:
        return self.layers[i].spec("gelu_tanh")

    def block(
        self, i: int, x: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, cache: KVCache
    ) -> torch.Tensor:
        c, layer, n = self.config, self.layers[i], x.shape[0]
        h = rms_norm(x, layer.attn_norm, c.rms_eps)
        q, k, v = layer.wqkv(h, meta.prefill)
        q = rms_norm(q.reshape(n, c.n_heads, c.head_dim), layer.q_norm, c.rms_eps)
        k = rms_norm(k.reshape(n, c.n_kv_heads, c.head_dim), layer.k_norm, c.rms_eps)
        v = v.reshape(n, c.n_kv_heads, c.head_dim)
        a = layer.wo(self.attend(i, q, k, v, positions, meta, cache), meta.prefill)
        x = x + rms_norm(a, layer.post_attn_norm, c.rms_eps)
        h = rms_norm(x, layer.ffn_norm, c.rms_eps)
        f = layer.w_down(gelu_tanh_mul(*layer.w_gate_up(h, meta.prefill)), meta.prefill)
        return x + rms_norm(f, layer.post_ffn_norm, c.rms_eps)
