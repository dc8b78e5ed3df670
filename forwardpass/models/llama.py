"""`llama`: Llama 2/3, Mistral, SmolLM2 and every GGUF that declares general.architecture = llama.

Pre-norm blocks (RMSNorm), grouped-query attention with RoPE, SwiGLU feed-forward. The GGUF converter permutes
the query and key rows so that RoPE rotates adjacent pairs. Subclasses add what qwen2 (q/k/v biases) and qwen3
(per-head RMSNorm of q and k) change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..gguf.weights import QuantWeight, WeightStore
from ..kernels import Linear, MultiLinear
from ..kernels.native_decoder import LayerSpec
from .attention import AttentionMetadata, KVCache
from .base import DecoderLM
from .config import MetadataView, ModelConfig, vocab_size_of
from .layers import rms_norm, silu_mul


@dataclass
class LlamaLayer:
    attn_norm: torch.Tensor
    wqkv: MultiLinear  # -> q, k, v
    wo: Linear
    ffn_norm: torch.Tensor
    w_gate_up: MultiLinear  # -> gate, up
    w_down: Linear
    q_norm: torch.Tensor | None = None
    k_norm: torch.Tensor | None = None

    def spec(self, act: str) -> LayerSpec:
        """This layer for the native CPU step, with `act` the feed-forward's gate activation."""
        return LayerSpec(
            attn_norm=self.attn_norm,
            qkv=self.wqkv,
            o=self.wo,
            ffn_norm=self.ffn_norm,
            gate_up=self.w_gate_up,
            down=self.w_down,
            act=act,
            q_norm=self.q_norm,
            k_norm=self.k_norm,
        )


class LlamaLM(DecoderLM):
    arch: ClassVar[str] = "llama"
    rope_neox: ClassVar[bool] = False
    qkv_bias: ClassVar[bool] = False
    qk_norm: ClassVar[bool] = False

    @classmethod
    def config_from_metadata(cls, metadata: dict[str, Any]) -> ModelConfig:
        m = MetadataView(metadata, cls.arch)
        n_layers, d_model, n_heads = m.int("block_count"), m.int("embedding_length"), m.int("attention.head_count")
        head_dim = m.int("attention.key_length", d_model // n_heads)
        scale = 1.0
        if m.raw("rope.scaling.type") == "linear":
            scale = m.float("rope.scaling.factor", 1.0)
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
            rms_eps=m.float("attention.layer_norm_rms_epsilon"),
            rope_dims=m.int("rope.dimension_count", head_dim),
            sliding_window=(0,) * n_layers,
            rope_bases=(m.float("rope.freq_base", 10000.0),) * n_layers,
            rope_scales=(scale,) * n_layers,
        )

    def load_layer(self, store: WeightStore, i: int) -> LlamaLayer:
        c, p = self.config, f"blk.{i}."
        q_out, kv_out = c.n_heads * c.head_dim, c.n_kv_heads * c.head_dim

        def weight(name: str, out: int, inp: int) -> QuantWeight:
            return store.get(p + name + ".weight", (out, inp))

        qkv = [("attn_q", q_out), ("attn_k", kv_out), ("attn_v", kv_out)]
        biases = [store.get_f32(p + n + ".bias", (out,)) for n, out in qkv] if self.qkv_bias else None
        layer = LlamaLayer(
            attn_norm=self.norm(store, p + "attn_norm.weight", c.d_model),
            wqkv=self.multi_linear([weight(n, out, c.d_model) for n, out in qkv], biases),
            wo=self.linear(weight("attn_output", c.d_model, q_out)),
            ffn_norm=self.norm(store, p + "ffn_norm.weight", c.d_model),
            w_gate_up=self.multi_linear([weight("ffn_gate", c.n_ff, c.d_model), weight("ffn_up", c.n_ff, c.d_model)]),
            w_down=self.linear(weight("ffn_down", c.d_model, c.n_ff)),
        )
        if self.qk_norm:
            layer.q_norm = self.norm(store, p + "attn_q_norm.weight", c.head_dim)
            layer.k_norm = self.norm(store, p + "attn_k_norm.weight", c.head_dim)
        return layer

    def decoder_layer(self, i: int) -> LayerSpec:
        return self.layers[i].spec("silu")

    def block(
        self, i: int, x: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, cache: KVCache
    ) -> torch.Tensor:
        c, layer = self.config, self.layers[i]
        h = rms_norm(x, layer.attn_norm, c.rms_eps)
        x = x + layer.wo(self.attention(i, layer, h, positions, meta, cache), meta.prefill)
        h = rms_norm(x, layer.ffn_norm, c.rms_eps)
        return x + layer.w_down(silu_mul(*layer.w_gate_up(h, meta.prefill)), meta.prefill)

    def attention(
        self,
        i: int,
        layer: LlamaLayer,
        h: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        cache: KVCache,
    ) -> torch.Tensor:
        c, n = self.config, h.shape[0]
        if layer.q_norm is None:  # q and k straight from the fused projection: no split, one rotation
            qkv = layer.wqkv.fused(h, meta.prefill).view(n, -1, c.head_dim)  # (T, H + 2 H_kv, D)
            return self.attend_qk(
                i, qkv[:, : c.n_heads + c.n_kv_heads], qkv[:, c.n_heads + c.n_kv_heads :], positions, meta, cache
            )
        q, k, v = layer.wqkv(h, meta.prefill)
        q = q.reshape(n, c.n_heads, c.head_dim)
        k = k.reshape(n, c.n_kv_heads, c.head_dim)
        v = v.reshape(n, c.n_kv_heads, c.head_dim)
        if layer.q_norm is not None:
            q = rms_norm(q, layer.q_norm, c.rms_eps)
            k = rms_norm(k, layer.k_norm, c.rms_eps)
        return self.attend(i, q, k, v, positions, meta, cache)
