"""BlockManager: the paged KV cache's bookkeeping, with prefix caching. No torch here.

The pool holds `num_blocks` blocks of `block_size` token slots. A sequence owns a block table (the ids of its
blocks, in order). Every full block is named by a hash chain: hash(previous block's hash, its tokens), so equal
hashes mean equal prefixes. A new sequence reuses every cached block of its prefix (reference counted) and
computes only the rest. A block whose last user leaves goes to the back of the free queue with its hash kept:
it can still be revived by a later prefix hit until it is the least recently freed and gets reused.
"""
from __future__ import annotations

from collections import OrderedDict

from .sequence import Sequence


def chain_hash(prev: int, tokens: tuple[int, ...]) -> int:
    return hash((prev, tokens))


class BlockManager:
    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        self.num_blocks, self.block_size = num_blocks, block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks
        self.block_tokens: list[tuple[int, ...] | None] = [None] * num_blocks
        self.cached: dict[int, int] = {}  # hash -> block id
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))  # LRU order
        self.prefix_queries = 0
        self.prefix_hits = 0  # tokens

    # ---- queries ----
    @property
    def num_free(self) -> int:
        return len(self.free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self.free)

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    # ---- admission ----
    def allocate_prefix(self, seq: Sequence) -> bool:
        """Give a waiting sequence its cached prefix blocks; sets `num_computed`. False if the pool is full."""
        assert not seq.block_table
        hits = self._lookup_prefix(seq) if self.enable_prefix_caching else []
        # at least one token must run to produce logits: never take the whole sequence from the cache
        while hits and len(hits) * self.block_size >= seq.num_tokens:
            hits.pop()
        need_now = self.blocks_for(min(seq.num_tokens, len(hits) * self.block_size + 1))
        revived = sum(1 for b in hits if self.ref_counts[b] == 0)
        if need_now - len(hits) + revived > self.num_free:
            return False
        prev = 0
        for b in hits:
            self._take(b)
            prev = self.block_hash[b]
            seq.block_table.append(b)
            seq.block_hashes.append(prev)
        seq.num_computed = seq.num_cached = len(hits) * self.block_size
        self.prefix_queries += seq.num_tokens
        self.prefix_hits += seq.num_cached
        return True

    def _lookup_prefix(self, seq: Sequence) -> list[int]:
        hits, prev, bs = [], 0, self.block_size
        for start in range(0, seq.num_tokens - bs + 1, bs):
            tokens = tuple(seq.token_ids[start:start + bs])
            h = chain_hash(prev, tokens)
            block = self.cached.get(h)
            if block is None or self.block_tokens[block] != tokens:
                break
            hits.append(block)
            prev = h
        return hits

    def ensure_slots(self, seq: Sequence, num_tokens: int) -> bool:
        """Grow the block table to hold `num_tokens` tokens. False (and no change) if the pool is too full."""
        need = self.blocks_for(num_tokens) - len(seq.block_table)
        if need <= 0:
            return True
        if need > len(self.free):
            return False
        for _ in range(need):
            block, _ = self.free.popitem(last=False)  # least recently freed first
            self._forget(block)
            self.ref_counts[block] = 1
            seq.block_table.append(block)
        return True

    def on_computed(self, seq: Sequence) -> None:
        """Name every block that just became full, so later requests can reuse it."""
        if not self.enable_prefix_caching:
            return
        bs = self.block_size
        while len(seq.block_hashes) < seq.num_computed // bs:
            i = len(seq.block_hashes)
            prev = seq.block_hashes[-1] if seq.block_hashes else 0
            tokens = tuple(seq.token_ids[i * bs:(i + 1) * bs])
            h = chain_hash(prev, tokens)
            block = seq.block_table[i]
            seq.block_hashes.append(h)
            if h not in self.cached:  # an identical block computed elsewhere stays the canonical one
                self._forget(block)
                self.cached[h] = block
                self.block_hash[block], self.block_tokens[block] = h, tokens

    def can_fork(self, parent: Sequence) -> bool:
        """Whether a fork of `parent` can get a block for its copy of the partial last block."""
        return parent.num_computed % self.block_size == 0 or bool(self.free)

    def fork(self, parent: Sequence, child: Sequence) -> list[tuple[int, int]]:
        """Give `child` the parent's computed tokens: full blocks shared, the partial last block copied
        (check `can_fork` first). Returns the (source, destination) blocks whose contents the caller copies."""
        full, partial = divmod(parent.num_computed, self.block_size)
        child.block_table = list(parent.block_table[:full])
        child.block_hashes = list(parent.block_hashes[:full])
        for block in child.block_table:
            self.ref_counts[block] += 1
        child.num_computed = child.num_cached = parent.num_computed
        if not partial:
            return []
        assert self.ensure_slots(child, parent.num_computed), "fork without a free block: call can_fork first"
        return [(parent.block_table[full], child.block_table[-1])]

    def free_seq(self, seq: Sequence) -> None:
        """Return a sequence's blocks; blocks nobody else uses become free (hash kept for later reuse)."""
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            assert self.ref_counts[block] >= 0, "block freed twice"
            if self.ref_counts[block] == 0:
                self.free[block] = None
        seq.block_table, seq.block_hashes = [], []
        seq.num_computed = 0

    # ---- internals ----
    def _take(self, block: int) -> None:
        if self.ref_counts[block] == 0:
            del self.free[block]
        self.ref_counts[block] += 1

    def _forget(self, block: int) -> None:
        h = self.block_hash[block]
        if h is not None and self.cached.get(h) == block:
            del self.cached[h]
        self.block_hash[block] = self.block_tokens[block] = None
