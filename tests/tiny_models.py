"""Tiny random-weight GGUF models written with gguf.GGUFWriter, one per architecture.

Tensors use several quant types (simple types quantized by gguf-py, K-quants as random raw blocks with small
scales), so the same fixtures exercise the dequantizers, the loader and every architecture's math.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T

VOCAB = 384
SPECIALS = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def _byte_tokens() -> list[str]:
    # GPT-2's printable byte alphabet, so the vocabulary is a real byte-level BPE one (without merges)
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def tokenizer_metadata(w: gguf.GGUFWriter) -> None:
    tokens = SPECIALS + _byte_tokens() + ["Ġt", "he", "Ġthe"]
    tokens += [f"tok{i}" for i in range(VOCAB - len(tokens))]
    types = [3] * len(SPECIALS) + [1] * (VOCAB - len(SPECIALS))
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(["Ġ t", "h e", "Ġt he"])
    w.add_bos_token_id(1)
    w.add_eos_token_id(1)
    w.add_add_bos_token(False)


class TensorMaker:
    """Writes tensors cycling through quant types; `rng` fixes the values."""

    CYCLE = [
        T.Q8_0,
        T.Q4_K,
        T.Q4_0,
        T.Q6_K,
        T.Q5_1,
        T.Q4_1,
        T.Q5_K,
        T.Q5_0,
        T.F16,
        T.Q3_K,
        T.Q2_K,
        T.BF16,
        T.IQ4_NL,
        T.IQ4_XS,
    ]

    # the types the CPU tile kernels (and so the native decode step) take
    TILE_CYCLE = [T.Q8_0, T.Q4_K, T.Q4_0, T.Q6_K, T.Q5_1, T.Q4_1, T.Q5_0]

    def __init__(self, w: gguf.GGUFWriter, seed: int, cycle: list[T] | None = None) -> None:
        self.w, self.rng, self.i = w, np.random.default_rng(seed), 0
        self.cycle = cycle or self.CYCLE

    def matrix(self, name: str, rows: int, cols: int, std: float = 0.05, qtype: T | None = None) -> None:
        if qtype is None:
            qtype = self.cycle[self.i % len(self.cycle)]
            self.i += 1
        block = gguf.GGML_QUANT_SIZES[qtype][0]
        if cols % block:
            qtype = T.Q8_0
        data = (self.rng.standard_normal((rows, cols)) * std).astype(np.float32)
        try:
            q = gguf.quants.quantize(data, qtype)
        except NotImplementedError:
            q = self._random_blocks(qtype, rows, cols)
        self.w.add_tensor(name, q, raw_dtype=qtype)

    def _random_blocks(self, qtype: T, rows: int, cols: int) -> np.ndarray:
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        raw = self.rng.integers(0, 256, size=(rows, cols // block, size), dtype=np.uint8)
        # Overwrite the fp16 scale fields with small finite values so every block decodes to modest weights:
        # d (and dmin) come first in Q4_K, Q5_K, IQ4_NL and IQ4_XS, last in Q2_K, Q3_K and Q6_K.
        small = lambda n: (self.rng.uniform(0.2, 1.0, size=n) * 2e-3).astype(np.float16).view(np.uint8)
        count = rows * (cols // block)
        if qtype in (T.Q4_K, T.Q5_K, T.IQ4_XS, T.IQ4_NL):
            raw[..., 0:2] = small(count).reshape(rows, -1, 2)
            if qtype in (T.Q4_K, T.Q5_K):
                raw[..., 2:4] = small(count).reshape(rows, -1, 2)
        else:  # Q2_K: d, dmin at the end; Q3_K, Q6_K: d at the end
            raw[..., size - 2 : size] = small(count).reshape(rows, -1, 2)
            if qtype == T.Q2_K:
                raw[..., size - 4 : size - 2] = small(count).reshape(rows, -1, 2)
        return raw.reshape(rows, -1)

    def vector(self, name: str, n: int, mean: float = 1.0, std: float = 0.1) -> None:
        self.w.add_tensor(name, (mean + self.rng.standard_normal(n) * std).astype(np.float32))


def write_tiny_model(
    path: Path,
    arch: str,
    seed: int = 0,
    chat_template: str | None = None,
    tile_types: bool = False,
    sliding_window: int = 8,
    context_length: int = 256,
    pooling_type: int | None = None,
) -> Path:
    """Writes a tiny `arch` model to `path`: width 256, a few layers, several quant types (only those of the CPU
    tile kernels with `tile_types`), and `tokenizer.chat_template` when `chat_template` is given. gemma3's
    local layers (five of its six) attend `sliding_window` positions. `pooling_type` writes `{arch}.pooling_type`
    (llama.cpp's enum: 1 mean, 2 cls, 3 last)."""
    d, ff, heads, kv_heads = 256, 512, 4, 2
    head_dim = 256 if arch == "gemma3" else d // heads
    n_layers = 6 if arch == "gemma3" else 3
    if arch == "gemma3":
        heads, kv_heads = 2, 1
    if arch == "qwen3":  # transformers reads no key_length for qwen3 and assumes Qwen3's head dim of 128
        heads, kv_heads, head_dim = 2, 1, 128
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(n_layers)
    w.add_context_length(context_length)
    w.add_embedding_length(d)
    w.add_feed_forward_length(ff)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_layer_norm_rms_eps(1e-5 if arch != "gemma3" else 1e-6)
    w.add_rope_freq_base(10000.0 if arch != "gemma3" else 1_000_000.0)
    if arch in ("qwen3", "gemma3"):
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if arch == "gemma3":
        w.add_sliding_window(sliding_window)  # small, so a 24-token prompt exercises the window
    tokenizer_metadata(w)
    if pooling_type is not None:
        w.add_uint32(f"{arch}.pooling_type", pooling_type)
    if chat_template is not None:
        w.add_chat_template(chat_template)
    t = TensorMaker(w, seed, TensorMaker.TILE_CYCLE if tile_types else None)
    t.matrix("token_embd.weight", VOCAB, d, std=0.5 if arch != "gemma3" else 0.05)
    for i in range(n_layers):
        p = f"blk.{i}."
        t.vector(p + "attn_norm.weight", d)
        t.matrix(p + "attn_q.weight", heads * head_dim, d)
        t.matrix(p + "attn_k.weight", kv_heads * head_dim, d)
        t.matrix(p + "attn_v.weight", kv_heads * head_dim, d)
        t.matrix(p + "attn_output.weight", d, heads * head_dim)
        if arch == "qwen2":
            for name, n in (
                ("attn_q", heads * head_dim),
                ("attn_k", kv_heads * head_dim),
                ("attn_v", kv_heads * head_dim),
            ):
                t.vector(p + name + ".bias", n, mean=0.0, std=0.05)
        if arch in ("qwen3", "gemma3"):
            t.vector(p + "attn_q_norm.weight", head_dim)
            t.vector(p + "attn_k_norm.weight", head_dim)
        if arch == "gemma3":
            t.vector(p + "post_attention_norm.weight", d)
            t.vector(p + "post_ffw_norm.weight", d)
        t.vector(p + "ffn_norm.weight", d)
        t.matrix(p + "ffn_gate.weight", ff, d)
        t.matrix(p + "ffn_up.weight", ff, d)
        t.matrix(p + "ffn_down.weight", d, ff)
    t.vector("output_norm.weight", d)
    if arch in ("llama", "qwen2"):  # separate output head; qwen3 and gemma3 tie it to the embedding
        t.matrix("output.weight", VOCAB, d, qtype=T.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path
