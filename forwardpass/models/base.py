"""DecoderLM: the shared skeleton of a decoder-only transformer over a paged KV cache.

An architecture file subclasses it and says three things: how to read its hyperparameters from the GGUF
metadata (`config_from_metadata`), which tensors a layer has (`load_layer`), and how a layer computes
(`block`). Everything else (embedding, final norm, output head, the strict loader) lives here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

import torch

from ..gguf.weights import QuantWeight, WeightStore
from ..kernels import KernelChoice, Linear, MultiLinear, make_linear, make_multi_linear
from ..kernels.native import NativeLibrary
from ..kernels.native_decoder import LayerSpec, NativeDecoder, StepGather
from .attention import AttentionMetadata, KVCache, attention
from .config import ModelConfig
from .layers import Rotary, rms_norm, softcap


class ParallelLoad(Protocol):
    """How one tensor-parallel rank loads its part of a model (`parallel.shard.TensorParallelLoad`)."""

    def local_config(self, config: ModelConfig) -> ModelConfig:
        """The rank's hyperparameters: its query heads, KV heads and FFN columns."""
        ...

    def store(self, gguf: Any, config: ModelConfig) -> WeightStore:
        """A store that hands out the rank's slices (asked for with the local config's shapes)."""
        ...

    def wrap(self, weight: QuantWeight, linear: Linear) -> Linear:
        """The `Linear` of `weight` as this rank runs it (`attn_output` / `ffn_down` gather their input and output)."""
        ...

    def native_gather(self) -> StepGather:
        """The rank's side of the native one-call step: its part of `attn_output` / `ffn_down`, the all-gathers."""
        ...


@dataclass(frozen=True)
class LoadOptions:
    mode: str = "dequant"  # the Linear backend ("reference" = exact float32)
    device: str = "cpu"
    kernels: KernelChoice = field(default_factory=KernelChoice)  # the kernels of "fast" mode (`LLM` picks them)
    parallel: ParallelLoad | None = None  # tensor parallelism: this rank's part only

    @property
    def cpu_kernels(self) -> KernelChoice:
        """`kernels` as they apply to this model: the native library only in fast mode on a CPU."""
        if self.mode == "fast" and torch.device(self.device).type == "cpu":
            return self.kernels
        return self.kernels.without_native()

    @property
    def cpu_native(self) -> NativeLibrary | None:
        """The native library where this model runs on it: fast mode on a CPU."""
        return self.cpu_kernels.native


class DecoderLM:
    arch: ClassVar[str]
    rope_neox: ClassVar[bool] = True  # rotate halves (NEOX) vs adjacent pairs (GGUF llama)

    def __init__(self, config: ModelConfig, store: WeightStore, options: LoadOptions) -> None:
        self.config = config
        self.options = options
        self._store: WeightStore | None = store  # while loading: repacked file bytes are released through it
        c = config
        self.tok_embd = store.get("token_embd.weight", (c.vocab_size, c.d_model)).to(options.device)
        freq_factors = store.optional("rope_freqs.weight", (c.rope_dims // 2,))
        factors = freq_factors.dequantize() if freq_factors is not None else None
        rotaries: dict[tuple[float, float], Rotary] = {}
        self.rotary = [
            rotaries.setdefault((base, scale), Rotary(c.rope_dims, base, self.rope_neox, scale, factors))
            for base, scale in zip(c.rope_bases, c.rope_scales)
        ]
        self.layers = [self.load_layer(store, i) for i in range(c.n_layers)]
        self.output_norm = self.norm(store, "output_norm.weight", c.d_model)
        output = store.optional("output.weight", (c.vocab_size, c.d_model)) or self.tok_embd
        self.lm_head = self.linear(output)
        store.check_all_claimed()
        self._store = None
        self.native_decoder = self._native_decoder()

    # ---- what an architecture provides ----
    @classmethod
    def config_from_metadata(cls, metadata: dict[str, Any]) -> ModelConfig:
        raise NotImplementedError

    def load_layer(self, store: WeightStore, i: int) -> Any:
        raise NotImplementedError

    def block(
        self, i: int, x: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, cache: KVCache
    ) -> torch.Tensor:
        raise NotImplementedError

    def decoder_layer(self, i: int) -> LayerSpec | None:
        """Layer i as a `kernels.native_decoder.LayerSpec`, for the native CPU step; None opts out."""
        return None

    def _native_decoder(self) -> NativeDecoder | None:
        """The native step over this model's tiles where it can run (CPU fast mode with native kernels); on a
        tensor-parallel rank, over its part, gathering around `attn_output` / `ffn_down` as its `Linear`s do."""
        lib = self.options.cpu_kernels.step_lib
        if lib is None:
            return None
        gather = self.options.parallel.native_gather() if self.options.parallel is not None else None
        self._rotaries = list({id(r): r for r in self.rotary}.values())  # distinct tables, in layer order
        index = {id(r): i for i, r in enumerate(self._rotaries)}
        specs = [self.decoder_layer(i) for i in range(self.config.n_layers)]
        return NativeDecoder.build(
            self.config,
            specs,
            [index[id(r)] for r in self.rotary],
            self.rope_neox,
            self.lm_head,
            self.output_norm,
            lib,
            gather,
        )

    def _native_rope(self, positions: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        """(R, T, 2, rope_dims): cos and sin of each distinct rope table at each position, for the native step."""
        tables = []
        for r in self._rotaries:
            cos, sin = meta.cached(("rope", id(r)), lambda r=r: r.factors(positions))
            tables.append(torch.stack((cos[:, 0], sin[:, 0]), dim=1))  # (T, 2, dims)
        return torch.stack(tables)

    # ---- helpers for architectures ----
    def linear(self, weight: QuantWeight, bias: torch.Tensor | None = None) -> Linear:
        release = self._store.release if self._store is not None else None
        linear = make_linear(
            weight,
            bias,
            mode=self.options.mode,
            device=self.options.device,
            release=release,
            kernels=self.options.cpu_kernels,
        )
        return self.options.parallel.wrap(weight, linear) if self.options.parallel is not None else linear

    def multi_linear(self, weights: list[QuantWeight], biases: list[torch.Tensor] | None = None) -> MultiLinear:
        release = self._store.release if self._store is not None else None
        return make_multi_linear(
            weights,
            biases,
            mode=self.options.mode,
            device=self.options.device,
            release=release,
            kernels=self.options.cpu_kernels,
        )

    def norm(self, store: WeightStore, name: str, size: int) -> torch.Tensor:
        return store.get_f32(name, (size,)).to(self.options.device)

    def attend(
        self,
        i: int,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        cache: KVCache,
    ) -> torch.Tensor:
        """Rotate q and k, store k and v in the cache, attend. q: (T, H, D); k, v: (T, H_kv, D)."""
        return self.attend_qk(i, torch.cat((q, k), dim=1), v, positions, meta, cache)

    def attend_qk(
        self,
        i: int,
        qk: torch.Tensor,
        v: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        cache: KVCache,
    ) -> torch.Tensor:
        """`attend` with q and k side by side, qk: (T, H + H_kv, D), as a fused projection gives them: one
        rotation for both."""
        rotary, n_heads = self.rotary[i], self.config.n_heads
        rotation = meta.cached(("rotation", id(rotary)), lambda: rotary.rotation(positions))
        qk = rotary(qk, rotation)  # float32
        q, k = qk[:, :n_heads], qk[:, n_heads:]
        cache.write(i, meta.slot_mapping, k, v)
        o = attention(
            q, cache, i, meta, self.config.scale, self.config.sliding_window[i], self.options.cpu_kernels.attention_lib
        )
        return o.reshape(q.shape[0], -1)

    # ---- the forward pass ----
    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(T,) token ids -> (T, d_model) float32."""
        x = self.tok_embd.dequantize_rows(input_ids)
        return x * self.config.embed_scale if self.config.embed_scale != 1.0 else x

    def forward(
        self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata, cache: KVCache
    ) -> torch.Tensor:
        """(T,) ids at (T,) positions -> (T, d_model) final hidden states (after the output norm)."""
        x = self.embed(input_ids)
        if self.native_decoder is not None and self.native_decoder.accepts(cache):
            x = self.native_decoder.step(x, self._native_rope(positions, meta), meta, cache)
        else:
            for i in range(self.config.n_layers):
                x = self.block(i, x, positions, meta, cache)
        return rms_norm(x, self.output_norm, self.config.rms_eps)

    def forward_logits(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        cache: KVCache,
        rows: torch.Tensor,
        prefill: bool | None = None,
    ) -> torch.Tensor:
        """The logits (len(rows), vocab) float32 of the flat batch's positions `rows`; the native step computes
        the head in the same call where it can."""
        native = self.native_decoder
        if native is not None and native.has_head and native.accepts(cache) and rows.numel():
            logits = native.step(self.embed(input_ids), self._native_rope(positions, meta), meta, cache, rows)
            return softcap(logits, self.config.final_logit_softcap)
        hidden = self.forward(input_ids, positions, meta, cache)
        if rows.numel() != hidden.shape[0]:
            hidden = hidden.index_select(0, rows)
        return self.compute_logits(hidden, prefill)

    def compute_logits(self, hidden: torch.Tensor, prefill: bool | None = None) -> torch.Tensor:
        """(N, d_model) -> (N, vocab) float32. `prefill` picks the head's kernel as for any Linear."""
        return softcap(self.lm_head(hidden, prefill).float(), self.config.final_logit_softcap)
