"""Which heads and FFN columns each tensor-parallel rank holds. Pure Python: no torch, so it is checked before any
process starts.

Attention is split by KV heads: a rank holds whole KV heads and the query heads that read them, so grouped-query
attention stays local (a rank's query head h reads its KV head h // group, as on one device). With fewer KV heads
than ranks, each KV head is held by several ranks (its projection computed on each) and its query heads are split
among them. Splits may be uneven (SmolLM2-135M: 3 KV heads on 2 ranks hold 2 and 1), as long as every boundary
falls on a multiple of `o_block` / `down_block` (`shard.plan_for` passes the tile kernels' 16 rows: a rank's rows
of q/k/v and gate/up are whole tiles).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RankShard:
    """What one rank holds: global query heads, KV heads and FFN columns (ranges)."""

    rank: int
    q_heads: range
    kv_heads: range
    ff: range


def _even_parts(n: int, parts: int) -> list[range]:
    """n items in `parts` contiguous ranges, the first ones one longer when n does not divide."""
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        out.append(range(start, start + size))
        start += size
    return out


def _head_parts(n_heads: int, n_kv_heads: int, world: int) -> list[tuple[range, range]]:
    """(query heads, KV heads) per rank."""
    group = n_heads // n_kv_heads
    if n_kv_heads >= world:
        kv_parts = _even_parts(n_kv_heads, world)
        return [(range(kv.start * group, kv.stop * group), kv) for kv in kv_parts]
    copies = world // n_kv_heads
    if world % n_kv_heads or group % copies:
        raise ValueError(
            f"tensor_parallel_size {world} cannot split the model's {n_kv_heads} KV heads: it must be at most "
            f"{n_kv_heads}, or a multiple of it that divides the {group} query heads of each KV head"
        )
    per = group // copies
    parts = []
    for rank in range(world):
        kv = rank // copies
        first = kv * group + (rank % copies) * per
        parts.append((range(first, first + per), range(kv, kv + 1)))
    return parts


def plan_shards(
    n_heads: int, n_kv_heads: int, head_dim: int, n_ff: int, o_block: int, down_block: int, world: int
) -> list[RankShard]:
    """Each rank's heads and FFN columns. `o_block` / `down_block`: the unit (in columns of `attn_output` /
    `ffn_down`'s input, i.e. rows of q and gate/up) that every boundary must fall on: `shard.plan_for` passes the
    16-row tiles. `ValueError` when no split keeps every unit whole."""
    if world < 1:
        raise ValueError(f"tensor_parallel_size must be at least 1, got {world}")
    heads = _head_parts(n_heads, n_kv_heads, world)
    for q, _ in heads:
        if (q.start * head_dim) % o_block or (len(q) * head_dim) % o_block:
            raise ValueError(
                f"tensor_parallel_size {world}: a rank's query heads {q.start}..{q.stop - 1} start or end inside "
                f"a {o_block}-column block of attn_output (head dim {head_dim}); quantized blocks cannot be split"
            )
    if n_ff % down_block:
        raise ValueError(f"ffn_down's {n_ff} input columns are not whole blocks of {down_block}")
    units = n_ff // down_block
    if units < world:
        raise ValueError(
            f"tensor_parallel_size {world} is more than the {units} blocks of {down_block} FFN columns to split"
        )
    ff = [range(u.start * down_block, u.stop * down_block) for u in _even_parts(units, world)]
    return [RankShard(rank, q, kv, f) for rank, ((q, kv), f) in enumerate(zip(heads, ff))]
