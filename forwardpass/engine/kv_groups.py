"""How the KV cache memory is split among groups of layers (`KVGroup`, kept next to the KV cache in
`models/attention.py`). Pure arithmetic.

Layers are grouped by window (`config.sliding_window[i]`, 0 = global). A global layer keeps every position of a
sequence; a sliding layer keeps only what a query still to be computed can see (the block manager releases the
rest), so its pool needs far fewer blocks. The budget is `budget_tokens` tokens of whole contexts in every layer
(what one pool per layer held before groups). Each sliding group gets what all running sequences can hold at
once, capped by that per-layer share, and the global group gets the rest of the memory. Every group keeps room
for one request whatever the budget: a whole context for the global group, one window plus one chunk for a
sliding one.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..models.attention import KVGroup


def blocks_for(num_tokens: int, block_size: int) -> int:
    return -(-num_tokens // block_size)


def blocks_per_sequence(window: int, ctx: int, block_size: int, chunk: int) -> int:
    """The most blocks one sequence holds in a group at once. A sliding group's chunk of n tokens starting at p
    needs positions p - window + 1 .. p + n - 1, which touch at most blocks_for(window - 1 + n) + 1 blocks."""
    whole = blocks_for(ctx, block_size)
    return whole if not window else min(whole, blocks_for(window - 1 + chunk, block_size) + 1)


def sliding_group_need(window: int, block_size: int, max_num_seqs: int, max_num_batched_tokens: int) -> int:
    """The most blocks a sliding group can hold for all running sequences: each holds at most the window's
    blocks (blocks_for(window - 1) + 1) plus those of its chunk this step (blocks_for(n) + 1 with chunks summing
    to max_num_batched_tokens at most)."""
    return max_num_seqs * (blocks_for(window - 1, block_size) + 2) + blocks_for(max_num_batched_tokens, block_size)


def plan_kv_groups(
    windows: Sequence[int],
    budget_tokens: int,
    block_size: int,
    ctx: int,
    max_num_seqs: int,
    max_num_batched_tokens: int,
) -> list[KVGroup]:
    """One `KVGroup` per distinct window (a window of ctx or more keeps whole contexts: global), global first.

    Without sliding layers: one group of max(ctx, budget_tokens) tokens' blocks, as a single pool always was."""
    layers: dict[int, list[int]] = {}
    for i, window in enumerate(windows):
        layers.setdefault(window if 0 < window < ctx else 0, []).append(i)
    share = blocks_for(budget_tokens, block_size)  # per layer, if every layer kept whole contexts
    sizes = {}
    for window in layers:
        if window:
            fit = blocks_per_sequence(window, ctx, block_size, max_num_batched_tokens)
            need = sliding_group_need(window, block_size, max_num_seqs, max_num_batched_tokens)
            sizes[window] = max(fit, min(need, share))
    if 0 in layers:
        left = len(windows) * share - sum(len(layers[w]) * n for w, n in sizes.items())
        sizes[0] = max(blocks_for(ctx, block_size), left // len(layers[0]))
    return [KVGroup(w, tuple(layers[w]), sizes[w]) for w in sorted(layers)]
