"""Attention over a paged KV cache, for a flat batch of tokens from many sequences.

The runner packs every scheduled token of every sequence into one flat batch of T tokens: sequence s
contributes `query_lens[s]` tokens, the last ones of its `seq_lens[s]`-token context. Each new token's key and
value are written to its cache slot (`slot_mapping`); each sequence then attends over the slots its block table
names. Prefill chunks and decode tokens share this one path.

Layers are grouped by window (`KVGroup`): each group has its own pool and its own block table per sequence, so a
sliding-window group can give back the blocks that fell out of every later query's window. The metadata carries
one slot mapping and one context table per group; a layer reads its group's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..kernels.native import NativeLibrary


@dataclass(frozen=True)
class KVGroup:
    """Layers whose keys and values share one pool of blocks (and one block table per sequence); how many blocks
    each group gets is planned by `engine/kv_groups.py`."""

    window: int  # positions of a sequence the group keeps: 0 = all (global layers), w = the last w (sliding)
    layers: tuple[int, ...]
    num_blocks: int


@dataclass
class AttentionMetadata:
    query_lens: list[int]  # (S,) tokens of each sequence in this step
    seq_lens: list[int]  # (S,) context length of each sequence once this step's tokens are in
    slot_mapping: torch.Tensor  # (G, T) int64 cache slot of each new token in each KV group's pool
    # (G, S, L_max) cache slots of each sequence's context in each group, padded. Positions a sliding group has
    # released point at a valid slot (block 0) and are never read: every reader keeps to the layer's window.
    ctx_slots: torch.Tensor
    # Sequences with one new token (decoding) attend together in one batched matmul; the rest one by one.
    decode: list[int] = field(default_factory=list)  # indices of the one-token sequences
    decode_rows: torch.Tensor | None = None  # (B,) their token's row in the flat batch
    decode_lens: torch.Tensor | None = None  # (B,) their context lengths
    prefill: bool | None = None  # the rows' role (prompt or generated tokens), passed to every Linear
    # Per query row, for the native kernel: its sequence and how many context tokens it sees.
    row_seq: torch.Tensor | None = None  # (T,)
    row_lens: torch.Tensor | None = None  # (T,)
    _decode_ctx: dict[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    _shared: dict[object, torch.Tensor] = field(default_factory=dict)

    @property
    def num_seqs(self) -> int:
        return len(self.query_lens)

    @classmethod
    def build(
        cls,
        query_lens: list[int],
        seq_lens: list[int],
        block_tables: list[list[list[int]]],
        slot_mapping: list[list[int]],
        block_size: int,
        device: torch.device,
        prefill: bool | None = None,
        sliding: bool = False,
    ) -> "AttentionMetadata":
        """`block_tables[s][g]`: sequence s's table in KV group g; `slot_mapping[g]`: the new tokens' slots there;
        `sliding`: some group releases blocks (its tables hold negative entries, pointed at block 0 here).
        `prefill=False` (generated tokens): every row attends through the batched decode path, even alone, so a
        token's attention is computed the same way whatever else is in the batch."""
        n_groups, n_seqs = len(slot_mapping), len(block_tables)
        width = max(len(t) for tables in block_tables for t in tables)
        rows = [tables[g] + [0] * (width - len(tables[g])) for g in range(n_groups) for tables in block_tables]
        tables = torch.tensor(rows, dtype=torch.int64, device=device).view(n_groups, n_seqs, width)
        if sliding:
            tables.clamp_(min=0)  # released entries: any valid block, never read
        longest = max(seq_lens)
        offsets = torch.arange(block_size, device=device)
        ctx_slots = (tables[:, :, : -(-longest // block_size), None] * block_size + offsets).flatten(2)[:, :, :longest]
        meta = cls(
            query_lens,
            seq_lens,
            torch.tensor(slot_mapping, dtype=torch.int64, device=device),
            ctx_slots,
            prefill=prefill,
        )
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

    @property
    def only_decode(self) -> bool:
        """Every row is a one-token sequence of the batched decode path (each decode step): rows in order."""
        return len(self.decode) == len(self.query_lens)

    def decode_context(self, group: int, window: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """For the torch fallback, which attends all one-token sequences (`decode`) in one padded batch: the
        (B, W) cache slots in `group`'s pool of the keys each may see, and which of them are padding as a
        (B, 1, 1, W) bool, or None where every column is real (one sequence, or equal lengths).
        With a window the columns are each sequence's last `window` positions, so released blocks are never
        gathered. Padding columns repeat one of the sequence's own keys (masked), so every gathered key is one
        the model wrote, never whatever a free block holds. Built on first use: the native kernel needs none."""
        key = (group, window)
        if key in self._decode_ctx:
            return self._decode_ctx[key]
        device = self.slot_mapping.device
        if self.decode_rows is None:
            starts = [0]
            for n in self.query_lens:
                starts.append(starts[-1] + n)
            self.decode_rows = torch.tensor([starts[s] for s in self.decode], device=device)
            self.decode_lens = torch.tensor([self.seq_lens[s] for s in self.decode], device=device)
        lens = self.decode_lens[:, None]
        lengths = [self.seq_lens[s] for s in self.decode]
        width = max(lengths)
        real = min(lengths) >= (window if 0 < window < width else width)  # no padding column (no device sync)
        if 0 < window < width:
            pos = lens - window + torch.arange(window, device=device)[None, :]  # the last `window`, left-padded
            mask = pos >= 0
        else:
            pos = torch.arange(width, device=device)[None, :].expand(len(self.decode), width)  # right-padded
            mask = pos < lens
        slots = self.ctx_slots[group, self.decode].gather(1, torch.minimum(pos.clamp(min=0), lens - 1))
        padding = None if real else ~mask[:, None, None, :]
        self._decode_ctx[key] = slots, padding
        return slots, padding


class KVCache:
    """One preallocated pool per layer, of its KV group's `num_blocks` blocks of `block_size` tokens' keys and
    values."""

    def __init__(
        self,
        groups: list[KVGroup],
        block_size: int,
        n_kv_heads: int,
        head_dim: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        self.groups, self.block_size = list(groups), block_size
        self.num_blocks = [g.num_blocks for g in self.groups]
        self.layer_group = [0] * sum(len(g.layers) for g in self.groups)
        for index, group in enumerate(self.groups):
            for layer in group.layers:
                self.layer_group[layer] = index
        shape = lambda layer: (self.num_blocks[self.layer_group[layer]] * block_size, n_kv_heads, head_dim)
        self.k = [torch.zeros(shape(i), dtype=dtype, device=device) for i in range(len(self.layer_group))]
        self.v = [torch.zeros(shape(i), dtype=dtype, device=device) for i in range(len(self.layer_group))]
        self.dtype = dtype

    def write(self, layer: int, slot_mapping: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """slot_mapping: (G, T) per-group slots; k, v: (T, n_kv_heads, head_dim) for the T new tokens."""
        slots = slot_mapping[self.layer_group[layer]]
        self.k[layer].index_copy_(0, slots, k.to(self.dtype))
        self.v[layer].index_copy_(0, slots, v.to(self.dtype))

    def copy_block(self, group: int, src: int, dst: int) -> None:
        """Copy one block's keys and values in every layer of `group` (copy-on-write of a shared partial block)."""
        bs = self.block_size
        for layer in self.groups[group].layers:
            self.k[layer][dst * bs : (dst + 1) * bs] = self.k[layer][src * bs : (src + 1) * bs]
            self.v[layer][dst * bs : (dst + 1) * bs] = self.v[layer][src * bs : (src + 1) * bs]

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)


def attention(
    q: torch.Tensor,
    cache: KVCache,
    layer: int,
    meta: AttentionMetadata,
    scale: float,
    window: int = 0,
    native: NativeLibrary | None = None,
) -> torch.Tensor:
    """q: (T, n_heads, head_dim) for the batch's new tokens -> (T, n_heads, head_dim).

    `window` > 0 limits each query to the keys less than `window` positions behind it (sliding window): only
    those are read, so the blocks a sliding KV group has released never are. With `native` (CPU kernels) and a
    bf16 CPU cache, the native kernel attends each row alone in a fixed order: batch-invariant by construction.
    """
    group = cache.layer_group[layer]
    if native is not None and cache.k[layer].dtype == torch.bfloat16 and q.device.type == "cpu":
        return native.paged_attention_into(
            q, cache.k[layer], cache.v[layer], meta.ctx_slots[group], meta.row_seq, meta.row_lens, scale, window
        )
    if meta.only_decode:  # a decode step: no per-sequence rows, no scatter into an output
        slots, padding = meta.decode_context(group, window)
        return _decode_attention(q, cache.k[layer], cache.v[layer], slots, padding, scale)
    ctx = meta.ctx_slots[group]  # (S, L_max)
    out = torch.empty_like(q)
    batched = set(meta.decode)
    start = 0
    for s in range(meta.num_seqs):
        n, seq_len = meta.query_lens[s], meta.seq_lens[s]
        if s not in batched:
            first = max(0, seq_len - n - window + 1) if window > 0 else 0  # the first key the first query sees
            slots = ctx[s, first:seq_len]
            k = cache.k[layer].index_select(0, slots)  # (L, n_kv, D)
            v = cache.v[layer].index_select(0, slots)
            out[start : start + n] = _sequence_attention(q[start : start + n], k, v, scale, window)
        start += n
    if batched:
        slots, padding = meta.decode_context(group, window)
        out[meta.decode_rows] = _decode_attention(
            q[meta.decode_rows], cache.k[layer], cache.v[layer], slots, padding, scale
        )
    return out


# The PyTorch attention (CUDA, and CPUs without the native kernel) reduces in float64: a kernel's summation order
# depends on the padded shape (the batch's longest context, the chunk's length, a prompt split in chunks), and
# float64 keeps those differences ~1e-16, far below the float32 rounding of the result, so a row's output does not
# depend on the batch (float32 changed a row by 1.8e-7 in 1 of 4 batches on an H200, and greedy tokens in 1 of 3
# random request storms on the CPU; float64 in none). The native CPU kernel computes each row alone instead.
ACC_DTYPE = torch.float64


def _decode_attention(
    q: torch.Tensor,
    k_pool: torch.Tensor,
    v_pool: torch.Tensor,
    slots: torch.Tensor,
    padding: torch.Tensor | None,
    scale: float,
) -> torch.Tensor:
    """B decoding sequences at once: q (B, H, D) over the keys and values of the pools (slots, H_kv, D) at their
    padded contexts' `slots` (B, L), of which `padding` (B, 1, 1, L) says which are padding -> (B, H, D)."""
    b, n_heads, head_dim = q.shape
    n_kv, width = k_pool.shape[1], slots.shape[1]
    acc = ACC_DTYPE
    k = k_pool.index_select(0, slots.view(-1)).view(b, width, n_kv, head_dim)
    v = v_pool.index_select(0, slots.view(-1)).view(b, width, n_kv, head_dim)
    qh = q.view(b, n_kv, n_heads // n_kv, head_dim).to(acc)  # (B, H_kv, group, D)
    scores = torch.matmul(qh, k.permute(0, 2, 3, 1).to(acc)).mul_(scale)  # (B, H_kv, group, L)
    if padding is not None:
        scores.masked_fill_(padding, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    out = torch.matmul(probs, v.permute(0, 2, 1, 3).to(acc))  # (B, H_kv, group, D)
    return out.view(b, n_heads, head_dim).to(q.dtype)


def _sequence_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, window: int) -> torch.Tensor:
    """One sequence: q (n, H, D) are the last n positions of the L-token context k, v (L, H_kv, D)."""
    n, n_heads, head_dim = q.shape
    ctx, n_kv = k.shape[0], k.shape[1]
    group = n_heads // n_kv
    acc = ACC_DTYPE
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
