"""Attention over a paged KV cache, for a flat batch of tokens from many sequences.

The runner packs every scheduled token of every sequence into one flat batch of T tokens: sequence s
contributes `query_lens[s]` tokens, the last ones of its `seq_lens[s]`-token context. Each new token's key and
value are written to its cache slot (`slot_mapping`); each sequence then attends over the slots its block table
names. Prefill chunks and decode tokens share this one path.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..kernels.native import native_paged_attention


@dataclass
class AttentionMetadata:
    query_lens: list[int]  # (S,) tokens of each sequence in this step
    seq_lens: list[int]  # (S,) context length of each sequence once this step's tokens are in
    block_tables: torch.Tensor  # (S, max_blocks) int64 block ids (padding entries are never read)
    slot_mapping: torch.Tensor  # (T,) int64 cache slot of each new token: block * block_size + offset
    # Sequences with one new token (decoding) attend together in one batched matmul; the rest one by one.
    decode: list[int] = field(default_factory=list)  # indices of the one-token sequences
    decode_rows: torch.Tensor | None = None  # (B,) their token's row in the flat batch
    decode_slots: torch.Tensor | None = None  # (B, L_max) cache slots of their contexts, padded
    decode_lens: torch.Tensor | None = None  # (B,) their context lengths
    prefill: bool | None = None  # the rows' role (prompt or generated tokens), passed to every Linear
    # Per query row, for the native kernel: its sequence and how many context tokens it sees.
    ctx_slots: torch.Tensor | None = None  # (S, L_max) cache slots of each sequence's context, padded
    row_seq: torch.Tensor | None = None  # (T,)
    row_lens: torch.Tensor | None = None  # (T,)
    _masks: dict[int, torch.Tensor] = field(default_factory=dict)
    _shared: dict[object, torch.Tensor] = field(default_factory=dict)

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens)

    @classmethod
    def build(cls, query_lens: list[int], seq_lens: list[int], block_tables: list[list[int]],
              slot_mapping: list[int], block_size: int, device: torch.device,
              prefill: bool | None = None) -> "AttentionMetadata":
        """`prefill=False` (generated tokens): every row attends through the batched decode path, even alone,
        so a token's attention is computed the same way whatever else is in the batch."""
        width = max(len(t) for t in block_tables)
        tables = torch.tensor([t + [0] * (width - len(t)) for t in block_tables], dtype=torch.int64, device=device)
        meta = cls(query_lens, seq_lens, tables, torch.tensor(slot_mapping, dtype=torch.int64, device=device),
                   prefill=prefill)
        longest = max(seq_lens)
        offsets = torch.arange(block_size, device=device)
        meta.ctx_slots = (tables[:, :-(-longest // block_size), None] * block_size + offsets).flatten(1)[:, :longest]
        row_seq, row_lens = [], []
        for s, (n, length) in enumerate(zip(query_lens, seq_lens)):
            row_seq.extend([s] * n)
            row_lens.extend(range(length - n + 1, length + 1))
        meta.row_seq = torch.tensor(row_seq, dtype=torch.int64, device=device)
        meta.row_lens = torch.tensor(row_lens, dtype=torch.int64, device=device)
        meta.decode = [] if prefill else [s for s, n in enumerate(query_lens) if n == 1]
        if len(meta.decode) == 1 and prefill is None:
            meta.decode = []  # a lone decoding sequence takes the per-sequence path
        return meta

    def cached(self, key: object, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """A per-step tensor shared by every layer (e.g. RoPE factors), made on first use."""
        if key not in self._shared:
            self._shared[key] = make()
        return self._shared[key]

    def _build_decode_batch(self) -> None:
        """The torch fallback attends all one-token sequences (`decode`) in one padded batch; built on first use,
        since the native kernel needs none of it."""
        if self.decode_rows is not None:
            return
        starts = [0]
        for n in self.query_lens:
            starts.append(starts[-1] + n)
        device = self.slot_mapping.device
        self.decode_rows = torch.tensor([starts[s] for s in self.decode], device=device)
        lens = [self.seq_lens[s] for s in self.decode]
        self.decode_slots = self.ctx_slots[self.decode, :max(lens)]
        self.decode_lens = torch.tensor(lens, device=device)

    def decode_mask(self, window: int) -> torch.Tensor:
        """(B, L_max) bool: which padded context slots each decoding sequence may attend."""
        if window not in self._masks:
            assert self.decode_slots is not None and self.decode_lens is not None
            pos = torch.arange(self.decode_slots.shape[1], device=self.decode_slots.device)[None, :]
            last = self.decode_lens[:, None] - 1
            mask = pos <= last
            if window > 0:
                mask &= last - pos < window
            self._masks[window] = mask
        return self._masks[window]


class KVCache:
    """One preallocated pool of `num_blocks` blocks per layer, each holding `block_size` tokens' keys and values."""

    def __init__(self, n_layers: int, num_blocks: int, block_size: int, n_kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        self.num_blocks, self.block_size = num_blocks, block_size
        slots = num_blocks * block_size
        self.k = [torch.zeros(slots, n_kv_heads, head_dim, dtype=dtype, device=device) for _ in range(n_layers)]
        self.v = [torch.zeros(slots, n_kv_heads, head_dim, dtype=dtype, device=device) for _ in range(n_layers)]
        self.dtype = dtype

    def write(self, layer: int, slot_mapping: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """k, v: (T, n_kv_heads, head_dim) for the T new tokens."""
        self.k[layer].index_copy_(0, slot_mapping, k.to(self.dtype))
        self.v[layer].index_copy_(0, slot_mapping, v.to(self.dtype))

    def copy_block(self, src: int, dst: int) -> None:
        """Copy one block's keys and values in every layer (copy-on-write of a shared partial block)."""
        bs = self.block_size
        for layer in range(len(self.k)):
            self.k[layer][dst * bs:(dst + 1) * bs] = self.k[layer][src * bs:(src + 1) * bs]
            self.v[layer][dst * bs:(dst + 1) * bs] = self.v[layer][src * bs:(src + 1) * bs]

    def slots(self, block_table: torch.Tensor, seq_len: int) -> torch.Tensor:
        """The cache slots of a sequence's first `seq_len` tokens: (seq_len,) int64."""
        n_blocks = -(-seq_len // self.block_size)
        offsets = torch.arange(self.block_size, device=block_table.device)
        return (block_table[:n_blocks, None] * self.block_size + offsets).flatten()[:seq_len]

    @property
    def bytes_per_token(self) -> int:
        k = self.k[0]
        return 2 * len(self.k) * k.shape[1] * k.shape[2] * k.element_size()


def attention(q: torch.Tensor, cache: KVCache, layer: int, meta: AttentionMetadata, scale: float,
              window: int = 0) -> torch.Tensor:
    """q: (T, n_heads, head_dim) for the batch's new tokens -> (T, n_heads, head_dim).

    `window` > 0 limits each query to the keys less than `window` positions behind it (sliding window).
    """
    native = native_paged_attention(q, cache.k[layer], cache.v[layer], meta.ctx_slots, meta.row_seq,
                                    meta.row_lens, scale, window)
    if native is not None:  # every row alone, in a fixed order: batch-invariant by construction
        return native
    out = torch.empty_like(q)
    batched = set(meta.decode)
    start = 0
    for s in range(meta.num_seqs):
        n, seq_len = meta.query_lens[s], meta.seq_lens[s]
        if s not in batched:
            slots = cache.slots(meta.block_tables[s], seq_len)
            k = cache.k[layer].index_select(0, slots)  # (L, n_kv, D)
            v = cache.v[layer].index_select(0, slots)
            out[start:start + n] = _sequence_attention(q[start:start + n], k, v, scale, window)
        start += n
    if batched:
        meta._build_decode_batch()
        rows = meta.decode_rows
        out[rows] = _decode_attention(q[rows], cache, layer, meta, scale, window)
    return out


# Off the CPU, attention's reductions (over the head dim and the context) run in float64: a GPU kernel's summation
# order depends on the padded shape (the batch's longest context, the chunk's length), and float64 keeps those
# differences ~1e-16, far below the float32 rounding of the result, so a row's output does not depend on the batch.
CUDA_ACC_DTYPE = torch.float64


def _acc_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.float32 if q.device.type == "cpu" else CUDA_ACC_DTYPE


def _decode_attention(q: torch.Tensor, cache: KVCache, layer: int, meta: AttentionMetadata, scale: float,
                      window: int) -> torch.Tensor:
    """B decoding sequences at once: q (B, H, D) over their padded contexts -> (B, H, D)."""
    b, n_heads, head_dim = q.shape
    slots = meta.decode_slots  # (B, L)
    k = cache.k[layer][slots]  # (B, L, H_kv, D)
    v = cache.v[layer][slots]
    n_kv = k.shape[2]
    group = n_heads // n_kv
    acc = _acc_dtype(q)
    qh = q.view(b, n_kv, group, head_dim).to(acc)  # (B, H_kv, group, D)
    kh = k.permute(0, 2, 3, 1).to(acc)  # (B, H_kv, D, L)
    scores = torch.matmul(qh, kh) * scale  # (B, H_kv, group, L)
    mask = meta.decode_mask(window)[:, None, None, :]
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    out = torch.matmul(probs, v.permute(0, 2, 1, 3).to(acc))  # (B, H_kv, group, D)
    return out.reshape(b, n_heads, head_dim).to(q.dtype)


def _sequence_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                        window: int) -> torch.Tensor:
    """One sequence: q (n, H, D) are the last n positions of the L-token context k, v (L, H_kv, D)."""
    n, n_heads, head_dim = q.shape
    ctx, n_kv = k.shape[0], k.shape[1]
    group = n_heads // n_kv
    acc = _acc_dtype(q)
    qh = q.view(n, n_kv, group, head_dim).permute(1, 2, 0, 3).to(acc)  # (H_kv, group, n, D)
    kh = k.permute(1, 2, 0).to(acc)  # (H_kv, D, L)
    vh = v.permute(1, 0, 2).to(acc)  # (H_kv, L, D)
    scores = torch.matmul(qh.reshape(n_kv, group * n, head_dim), kh).view(n_kv, group, n, ctx) * scale
    mask = causal_mask(n, ctx, window, q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores, dim=-1).view(n_kv, group * n, ctx)
    out = torch.matmul(probs, vh).view(n_kv, group, n, head_dim)  # (H_kv, group, n, D)
    return out.permute(2, 0, 1, 3).reshape(n, n_heads, head_dim).to(q.dtype)


def causal_mask(n: int, ctx: int, window: int, device: torch.device) -> torch.Tensor | None:
    """(n, ctx) bool, True where query i (at position ctx - n + i) may attend key j; None if all may."""
    if n == 1 and (window <= 0 or ctx <= window):
        return None
    q_pos = torch.arange(ctx - n, ctx, device=device)[:, None]
    k_pos = torch.arange(ctx, device=device)[None, :]
    mask = k_pos <= q_pos
    if window > 0:
        mask &= q_pos - k_pos < window
    return mask
