"""BlockManager: the paged KV cache's bookkeeping, with prefix caching. No torch here.

Layers are grouped by how much of a sequence they attend (`windows`: 0 for the whole context, w for a sliding
window of w positions). Each group has its own pool of blocks of `block_size` token slots, and a sequence owns
one block table per group (the ids of its blocks, in order; every table has the same length). Every full block
is named by a hash chain: hash(previous block's hash, its tokens), so equal hashes mean equal prefixes, and a
group caches its copy of a block under that hash. A new sequence reuses every cached block of its prefix
(reference counted) and computes only the rest. A block whose last user leaves goes to the back of its pool's
free queue with its hash kept: it can still be revived by a later prefix hit until it is the least recently
freed and gets reused.

A sliding group keeps only the window: with `num_computed = p` the next query (at position p) sees keys from
p - w + 1 on, so the blocks wholly below that are released as the sequence advances and their table entries
become FREED (never read: the attention window excludes them). A prefix hit there needs only the blocks of the
last w positions before the hit point.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence as Seq

from .sequence import Sequence

FREED = -1  # a sliding group's table entry whose block was released (the runner points it at a valid slot)


def chain_hash(prev: int, tokens: tuple[int, ...]) -> int:
    return hash((prev, tokens))


class BlockPool:
    """One group's blocks: reference counts, the LRU free queue and the prefix-cache names."""

    def __init__(self, num_blocks: int, window: int) -> None:
        self.num_blocks, self.window = num_blocks, window
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks
        self.block_tokens: list[tuple[int, ...] | None] = [None] * num_blocks
        self.cached: dict[int, int] = {}  # hash -> block id
        self.free: OrderedDict[int, None] = OrderedDict((b, None) for b in range(num_blocks))  # LRU order

    def lookup(self, h: int, tokens: tuple[int, ...]) -> int | None:
        block = self.cached.get(h)
        return block if block is not None and self.block_tokens[block] == tokens else None

    def allocate(self) -> int:
        block, _ = self.free.popitem(last=False)  # least recently freed first
        self._forget(block)
        self.ref_counts[block] = 1
        return block

    def take(self, block: int) -> None:
        """One more user of a block (shared, or revived from the free queue)."""
        if self.ref_counts[block] == 0:
            del self.free[block]
        self.ref_counts[block] += 1

    def release(self, block: int) -> None:
        self.ref_counts[block] -= 1
        assert self.ref_counts[block] >= 0, "block freed twice"
        if self.ref_counts[block] == 0:
            self.free[block] = None

    def name(self, block: int, h: int, tokens: tuple[int, ...]) -> None:
        if h not in self.cached:  # an identical block computed elsewhere stays the canonical one
            self._forget(block)
            self.cached[h] = block
            self.block_hash[block], self.block_tokens[block] = h, tokens

    def _forget(self, block: int) -> None:
        h = self.block_hash[block]
        if h is not None and self.cached.get(h) == block:
            del self.cached[h]
        self.block_hash[block] = self.block_tokens[block] = None


class BlockManager:
    """`num_blocks`: one count for every group, or one per group; `windows`: each group's window (0: global)."""

    def __init__(
        self, num_blocks: int | Seq[int], block_size: int, enable_prefix_caching: bool = True, windows: Seq[int] = (0,)
    ) -> None:
        counts = [num_blocks] * len(windows) if isinstance(num_blocks, int) else list(num_blocks)
        if len(counts) != len(windows):
            raise ValueError(f"{len(counts)} block counts for {len(windows)} KV groups")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pools = [BlockPool(n, w) for n, w in zip(counts, windows)]
        self.sliding = [pool for pool in self.pools if pool.window > 0]
        self.prefix_queries = 0
        self.prefix_hits = 0  # tokens

    # ---- queries (totals over the groups) ----
    @property
    def num_blocks(self) -> int:
        return sum(pool.num_blocks for pool in self.pools)

    @property
    def num_free(self) -> int:
        return sum(len(pool.free) for pool in self.pools)

    @property
    def num_used(self) -> int:
        return self.num_blocks - self.num_free

    def blocks_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.block_size)

    def first_needed(self, pool: BlockPool, num_computed: int) -> int:
        """The first block of `pool` a sequence that has computed `num_computed` tokens still reads."""
        return max(0, num_computed - pool.window + 1) // self.block_size if pool.window else 0

    # ---- admission ----
    def allocate_prefix(self, seq: Sequence, copies: list[tuple[int, int, int]]) -> bool:
        """Give a waiting sequence its cached prefix blocks; sets `num_computed`. False if a pool is full.

        One token at least must run, for its logits: when every block of a block-aligned prompt is cached, its
        last token runs again, in a copy of the last block (the cached one may be shared); the (group, source,
        destination) blocks the runner must copy before the step runs are added to `copies`."""
        assert not seq.block_tables
        reuse = self.enable_prefix_caching and seq.reuse_prefix
        hits, hashes, found = self._lookup_prefix(seq, whole=True) if reuse else (0, [], [])
        start = min(hits * self.block_size, seq.num_tokens - 1)
        taken = self._taken(found, hits, start)
        if start < hits * self.block_size and not self._fits(taken):  # no block for the copy: run the last block
            hits, hashes, found = self._lookup_prefix(seq, whole=False)
            start = hits * self.block_size
            taken = self._taken(found, hits, start)
        if not self._fits(taken):
            return False
        for g, (pool, blocks) in enumerate(zip(self.pools, taken)):
            for b in blocks:
                pool.take(b)
            if start < hits * self.block_size:  # the last block's copy: the one new block
                source, blocks[-1] = blocks[-1], pool.allocate()
                pool.release(source)  # copied before anything writes to the cache again
                copies.append((g, source, blocks[-1]))
        seq.block_tables = [[FREED] * (hits - len(blocks)) + blocks for blocks in taken]
        seq.block_hashes = hashes[: start // self.block_size]
        seq.num_computed = seq.num_cached = start
        self.prefix_queries += seq.num_tokens
        self.prefix_hits += seq.num_cached
        return True

    def _taken(self, found: list[list[int | None]], hits: int, start: int) -> list[list]:
        """Each group's cached blocks a sequence takes when its first `hits` blocks are found and it runs from
        token `start` on (a sliding group: only those its window still sees)."""
        if not hits:
            return [[] for _ in self.pools]
        return [found[g][self.first_needed(pool, start) : hits] for g, pool in enumerate(self.pools)]

    def _fits(self, taken: list[list]) -> bool:
        """Whether every pool has the blocks `taken` revives and one new block (the first token's)."""
        revived = [sum(1 for b in blocks if pool.ref_counts[b] == 0) for pool, blocks in zip(self.pools, taken)]
        return all(1 + n <= len(pool.free) for pool, n in zip(self.pools, revived))

    def _lookup_prefix(self, seq: Sequence, whole: bool) -> tuple[int, list[int], list[list[int | None]]]:
        """(blocks hit, the chain hashes, each group's cached block per hash or None): the longest block-aligned
        prefix for which the global groups hold every block and the sliding groups the window before the first
        token to run (its end, or the last token when the prefix is the whole sequence: only with `whole`)."""
        bs = self.block_size
        hashes: list[int] = []
        found: list[list[int | None]] = [[] for _ in self.pools]
        prev = 0
        for i in range((seq.num_tokens if whole else seq.num_tokens - 1) // bs):
            tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
            prev = chain_hash(prev, tokens)
            row = [pool.lookup(prev, tokens) for pool in self.pools]
            if any(b is None and not pool.window for b, pool in zip(row, self.pools)):
                break  # a global group needs every block of the prefix
            hashes.append(prev)
            for blocks, b in zip(found, row):
                blocks.append(b)
        hits = len(hashes)
        if self.sliding:
            runs = {}  # group -> how many cached blocks end at each index, consecutively
            for g, pool in enumerate(self.pools):
                if pool.window:
                    run, runs[g] = 0, []
                    for b in found[g]:
                        run = run + 1 if b is not None else 0
                        runs[g].append(run)
            while hits and any(
                runs[g][hits - 1] < hits - self.first_needed(self.pools[g], min(hits * bs, seq.num_tokens - 1))
                for g in runs
            ):
                hits -= 1
        return hits, hashes, found

    def ensure_slots(self, seq: Sequence, num_tokens: int) -> bool:
        """Grow the block tables to hold `num_tokens` tokens. False (and no change) if a pool is too full."""
        tables = seq.block_tables
        if not tables:
            tables = seq.block_tables = [[] for _ in self.pools]
        need = self.blocks_for(num_tokens) - len(tables[0])
        if need <= 0:
            return True
        if any(need > len(pool.free) for pool in self.pools):
            return False
        for pool, table in zip(self.pools, tables):
            table.extend(pool.allocate() for _ in range(need))
        return True

    def on_computed(self, seq: Sequence) -> None:
        """Name every block that just became full, so later requests can reuse it; then release the sliding
        groups' blocks that no later query can see."""
        if self.enable_prefix_caching:
            bs = self.block_size
            while len(seq.block_hashes) < seq.num_computed // bs:
                i = len(seq.block_hashes)
                prev = seq.block_hashes[-1] if seq.block_hashes else 0
                tokens = tuple(seq.token_ids[i * bs : (i + 1) * bs])
                h = chain_hash(prev, tokens)
                seq.block_hashes.append(h)
                for pool, table in zip(self.pools, seq.block_tables):
                    assert table[i] != FREED, "a block is named before it can leave the window"
                    pool.name(table[i], h, tokens)
        if self.sliding:
            self.release_out_of_window(seq)

    def release_out_of_window(self, seq: Sequence) -> None:
        """Release every sliding-group block below what the next query (at `num_computed`) can see."""
        for pool, table in zip(self.pools, seq.block_tables):
            if pool.window:
                i = self.first_needed(pool, seq.num_computed)
                while i > 0 and table[i - 1] != FREED:  # released entries always form a prefix of the table
                    i -= 1
                    pool.release(table[i])
                    table[i] = FREED

    def can_fork(self, parent: Sequence) -> bool:
        """Whether a fork of `parent` can get a block in every group for its copy of the partial last block."""
        return parent.num_computed % self.block_size == 0 or all(pool.free for pool in self.pools)

    def fork(self, parent: Sequence, child: Sequence) -> list[tuple[int, int, int]]:
        """Give `child` the parent's computed tokens: full blocks shared, the partial last block copied in every
        group (check `can_fork` first). Returns the (group, source, destination) blocks the caller copies."""
        full, partial = divmod(parent.num_computed, self.block_size)
        child.block_tables = [list(table[:full]) for table in parent.block_tables]
        child.block_hashes = list(parent.block_hashes[:full])
        for pool, table in zip(self.pools, child.block_tables):
            for block in table:
                if block != FREED:
                    pool.take(block)
        child.num_computed = child.num_cached = parent.num_computed
        if not partial:
            return []
        assert self.ensure_slots(child, parent.num_computed), "fork without a free block: call can_fork first"
        return [(g, parent.block_tables[g][full], child.block_tables[g][full]) for g in range(len(self.pools))]

    def rollback(self, seq: Sequence) -> None:
        """Drop the slots past the computed tokens (speculative proposals that were rejected): every block wholly
        beyond `num_computed` returns to its pool, unnamed (a block is named only once its tokens are computed and
        accepted), so the tables hold exactly what a plain decode step would have left."""
        keep = self.blocks_for(seq.num_computed)
        for pool, table in zip(self.pools, seq.block_tables):
            while len(table) > keep:
                block = table.pop()
                if block != FREED:
                    pool.release(block)
        assert len(seq.block_hashes) <= seq.num_computed // self.block_size, "a named block holds rejected tokens"

    def check(self, seqs: Seq[Sequence]) -> None:
        """Raise AssertionError unless the pools agree with the live sequences `seqs` (every sequence holding
        blocks): reference counts, the free queue, the prefix-cache names and each table's length and hashes."""
        for g, pool in enumerate(self.pools):
            refs = [0] * pool.num_blocks
            for seq in seqs:
                for block in seq.block_tables[g] if seq.block_tables else ():
                    if block != FREED:
                        refs[block] += 1
            assert refs == pool.ref_counts, f"group {g}: reference counts disagree with the block tables"
            assert set(pool.free) == {b for b, r in enumerate(refs) if r == 0}, f"group {g}: free queue wrong"
            for h, block in pool.cached.items():
                assert pool.block_hash[block] == h, f"group {g}: cached block {block} named otherwise"
        for seq in seqs:
            if not seq.block_tables:
                continue
            assert len({len(t) for t in seq.block_tables}) == 1, "block tables of different lengths"
            assert len(seq.block_tables[0]) >= self.blocks_for(seq.num_computed), "computed tokens without a slot"
            full = seq.num_computed // self.block_size
            assert len(seq.block_hashes) <= full, "a named block is not wholly computed"
            prev = 0
            for i, h in enumerate(seq.block_hashes):
                prev = chain_hash(prev, tuple(seq.token_ids[i * self.block_size : (i + 1) * self.block_size]))
                assert h == prev, f"block {i}'s hash does not name its tokens"

    def free_seq(self, seq: Sequence) -> None:
        """Return a sequence's blocks; blocks nobody else uses become free (hash kept for later reuse)."""
        for pool, table in zip(self.pools, seq.block_tables):
            for block in reversed(table):
                if block != FREED:
                    pool.release(block)
        seq.block_tables, seq.block_hashes = [], []
        seq.num_computed = 0
