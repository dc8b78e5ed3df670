"""Block manager and scheduler: pure bookkeeping, no torch, milliseconds."""

from __future__ import annotations

from forwardpass.engine.block_manager import FREED, BlockManager
from forwardpass.engine.scheduler import Scheduler, SchedulerConfig
from forwardpass.engine.sequence import Sequence, Status


def seq_of(tokens: list[int], max_tokens: int = 1000) -> Sequence:
    return Sequence(list(tokens), len(tokens), max_tokens)


def compute_all(bm: BlockManager, seq: Sequence) -> None:
    assert bm.ensure_slots(seq, seq.num_tokens)
    seq.num_computed = seq.num_tokens
    bm.on_computed(seq)


def cached_and_freed(bm: BlockManager, tokens: list[int]) -> list[int]:
    """A sequence of `tokens` admitted, computed and freed: its block table (the blocks stay cached)."""
    seq = seq_of(tokens)
    bm.allocate_prefix(seq, [])
    compute_all(bm, seq)
    table = list(seq.block_table)
    bm.free_seq(seq)
    return table


def test_allocate_and_free_return_every_block():
    bm = BlockManager(8, 4)
    seqs = [seq_of(list(range(i, i + 10))) for i in range(2)]
    for s in seqs:
        assert bm.allocate_prefix(s, [])
        compute_all(bm, s)
    assert bm.num_used == 6
    for s in seqs:
        bm.free_seq(s)
    assert bm.num_used == 0 and bm.num_free == 8


def test_prefix_blocks_are_shared_and_reference_counted():
    bm = BlockManager(16, 4)
    a = seq_of(list(range(10)))
    assert bm.allocate_prefix(a, []) and a.num_computed == 0
    compute_all(bm, a)  # blocks [0-3], [4-7] full and named; [8, 9] partial
    b = seq_of(list(range(9)) + [99])
    assert bm.allocate_prefix(b, [])
    assert b.num_computed == 8 and b.block_table == a.block_table[:2]
    assert [bm.pools[0].ref_counts[x] for x in a.block_table[:2]] == [2, 2]
    bm.free_seq(a)
    assert [bm.pools[0].ref_counts[x] for x in b.block_table] == [1, 1]
    bm.free_seq(b)
    assert bm.num_used == 0


def test_freed_blocks_are_revived_by_a_later_prefix_hit():
    bm = BlockManager(16, 4)
    table = cached_and_freed(bm, list(range(12)))
    b = seq_of(list(range(13)))
    assert bm.allocate_prefix(b, [])
    assert b.block_table == table and b.num_cached == 12


def test_a_fully_cached_prompt_runs_its_last_token_in_a_copy_of_its_last_block():
    bm = BlockManager(16, 4)
    a = seq_of(list(range(8)))
    bm.allocate_prefix(a, [])
    compute_all(bm, a)
    b = seq_of(list(range(8)))
    copies = []
    assert bm.allocate_prefix(b, copies)
    assert b.num_computed == b.num_cached == 7  # one token must run to produce logits; the other 7 are cached
    assert b.block_table[0] == a.block_table[0] and b.block_table[1] != a.block_table[1]
    assert copies == [(0, a.block_table[1], b.block_table[1])]  # a still reads its block: b writes to a copy
    assert [bm.pools[0].ref_counts[x] for x in (*a.block_table, b.block_table[1])] == [2, 1, 1]
    assert b.block_hashes == a.block_hashes[:1]
    bm.check([a, b])
    advance(bm, b, 1)
    assert b.block_hashes == a.block_hashes  # named again: the cached block stays the canonical one
    assert bm.pools[0].cached[a.block_hashes[1]] == a.block_table[1]
    bm.check([a, b])
    cached = a.block_table[1]
    bm.free_seq(a)
    c, copies = seq_of(list(range(8))), []
    assert bm.allocate_prefix(c, copies) and c.num_computed == 7  # a's freed last block is revived as the source
    assert copies == [(0, cached, c.block_table[1])] and bm.pools[0].ref_counts[cached] == 0
    bm.check([b, c])


def test_a_fully_cached_prompt_runs_its_last_block_when_no_block_is_free_for_the_copy():
    bm = BlockManager(2, 4)
    table = cached_and_freed(bm, list(range(8)))
    b, copies = seq_of(list(range(8))), []
    assert bm.allocate_prefix(b, copies)  # both blocks revived leave none for a copy: block 1 is recomputed
    assert b.num_computed == 4 and b.block_table[0] == table[0] and copies == []
    bm.check([b])


def test_a_fully_cached_prompt_in_a_sliding_group_copies_the_last_block_of_both_groups():
    bm = sliding()
    a = seq_of(list(range(24)))
    assert bm.allocate_prefix(a, [])
    advance(bm, a, 24)
    bm.free_seq(a)
    b, copies = seq_of(list(range(24))), []
    assert bm.allocate_prefix(b, copies)
    assert b.num_computed == 23
    first = (23 - WINDOW + 1) // 4  # = 4: the query at 23 reads blocks 4 and 5
    assert b.block_tables[1][:first] == [FREED] * first and len(live(b, 1)) == 2
    assert [(g, dst) for g, _, dst in copies] == [(0, b.block_tables[0][5]), (1, b.block_tables[1][5])]
    bm.check([b])


def test_lru_reuse_forgets_old_hashes():
    bm = BlockManager(4, 4)
    a = seq_of(list(range(16)))
    bm.allocate_prefix(a, [])
    compute_all(bm, a)
    bm.free_seq(a)
    c = seq_of([7] * 16)
    assert bm.allocate_prefix(c, []) and c.num_computed == 0
    compute_all(bm, c)  # reuses all four blocks: a's prefix is gone
    d = seq_of(list(range(16)))
    bm.free_seq(c)
    assert bm.allocate_prefix(d, []) and d.num_computed == 0


def test_ensure_slots_fails_without_side_effects():
    bm = BlockManager(2, 4)
    s = seq_of(list(range(12)))
    assert not bm.ensure_slots(s, 12)
    assert s.block_table == [] and bm.num_free == 2


def run_until_done(sched: Scheduler, bm: BlockManager, max_new: int, steps: int = 1000) -> list[list]:
    """Simulate the engine: each completed sequence 'samples' token 1000 + its length."""
    log = []
    for _ in range(steps):
        batch = sched.schedule()
        if not batch:
            break
        log.append([(x.seq.seq_id, x.num_tokens) for x in batch.scheduled])
        sched.update(batch)
        for x in batch.scheduled:
            s = x.seq
            if x.samples:
                s.token_ids.append(1000 + s.num_tokens)
                if s.num_output_tokens >= max_new:
                    sched.finish(s)
    return log


def test_chunked_prefill_shares_steps_with_decode():
    bm = BlockManager(64, 4)
    sched = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=8), bm)
    a, b = seq_of(list(range(6))), seq_of(list(range(100, 120)))
    sched.add(a)
    sched.add(b)
    log = run_until_done(sched, bm, max_new=3)
    assert log[0] == [(a.seq_id, 6), (b.seq_id, 2)]
    assert log[1] == [(a.seq_id, 1), (b.seq_id, 7)]  # a decodes while b's prefill continues
    assert all(sum(n for _, n in step) <= 8 for step in log)
    assert a.status is Status.FINISHED and b.status is Status.FINISHED and bm.num_used == 0


def test_preemption_recomputes_and_finishes_everything():
    bm = BlockManager(6, 4)  # 24 slots for three sequences that each grow to 12 tokens
    sched = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=64), bm)
    seqs = [seq_of(list(range(10 * i, 10 * i + 6))) for i in range(3)]
    for s in seqs:
        sched.add(s)
    run_until_done(sched, bm, max_new=6)
    assert sched.num_preemptions > 0
    for s in seqs:
        assert s.status is Status.FINISHED and s.num_output_tokens == 6
        assert s.token_ids[6:] == [1000 + n for n in range(6, 12)]
    assert bm.num_used == 0


# ---- sliding-window groups: group 0 keeps whole contexts, group 1 the last WINDOW positions ----
WINDOW = 6  # with 4-token blocks: a query at position p reads blocks (p - 5) // 4 .. p // 4


def sliding(num_blocks: int | list[int] = 16, caching: bool = True) -> BlockManager:
    return BlockManager(num_blocks, 4, caching, windows=(0, WINDOW))


def used(bm: BlockManager, group: int) -> int:
    return bm.pools[group].num_blocks - len(bm.pools[group].free)


def live(seq: Sequence, group: int) -> list[int]:
    return [b for b in seq.block_tables[group] if b != FREED]


def advance(bm: BlockManager, seq: Sequence, n: int) -> None:
    """Compute the next n tokens of `seq` (one engine step)."""
    assert bm.ensure_slots(seq, seq.num_computed + n)
    seq.num_computed += n
    bm.on_computed(seq)


def test_sliding_group_releases_blocks_out_of_the_window():
    bm = sliding()
    s = seq_of(list(range(40)))
    assert bm.allocate_prefix(s, [])
    for p in range(40):
        advance(bm, s, 1)
        first = max(0, s.num_computed - WINDOW + 1) // 4  # the next query's first key's block
        assert s.block_tables[1][:first] == [FREED] * first
        assert FREED not in s.block_tables[1][first:]
        assert live(s, 0) == s.block_tables[0] and len(s.block_tables[0]) == bm.blocks_for(s.num_computed)
        assert used(bm, 1) <= bm.blocks_for(WINDOW - 1 + 1) + 1
    assert used(bm, 0) == 10 and used(bm, 1) == 2
    bm.free_seq(s)
    assert bm.num_used == 0 and bm.num_free == bm.num_blocks == 32


def test_a_prefill_chunk_holds_the_window_before_it_and_itself():
    bm = sliding()
    s = seq_of(list(range(60)))
    assert bm.allocate_prefix(s, [])
    for n in (13, 8, 17, 5):
        start = s.num_computed
        assert bm.ensure_slots(s, start + n)
        # while the chunk runs, every key its queries see (start - WINDOW + 1 on) is held
        first = max(0, start - WINDOW + 1) // 4
        assert FREED not in s.block_tables[1][first:] and len(s.block_tables[1]) == bm.blocks_for(start + n)
        assert used(bm, 1) <= bm.blocks_for(WINDOW - 1 + n) + 1
        s.num_computed += n
        bm.on_computed(s)
    assert used(bm, 1) == len(live(s, 1)) == 2


def test_prefix_hit_needs_only_the_window_before_the_hit():
    bm = sliding()
    a = seq_of(list(range(30)))
    assert bm.allocate_prefix(a, [])
    advance(bm, a, 30)  # one chunk: every block named in both groups, then all but the window released
    assert live(a, 1) == a.block_tables[1][6:]
    bm.free_seq(a)
    b = seq_of(list(range(28)) + [99, 98])
    assert bm.allocate_prefix(b, [])
    assert b.num_computed == b.num_cached == 28  # seven full blocks hit
    first = (28 - WINDOW + 1) // 4  # = 5: the sliding group takes only blocks 5 and 6
    assert b.block_tables[1][:first] == [FREED] * first and FREED not in b.block_tables[1][first:]
    assert len(b.block_tables[0]) == len(b.block_tables[1]) == 7
    assert used(bm, 0) == 7 and used(bm, 1) == 2
    advance(bm, b, 2)
    bm.free_seq(b)
    assert bm.num_used == 0


def test_prefix_hit_shrinks_when_the_window_blocks_were_evicted():
    bm = sliding([16, 8])
    a = seq_of(list(range(30)))
    assert bm.allocate_prefix(a, [])
    advance(bm, a, 30)
    window_blocks = live(a, 1)  # blocks 6 and 7 (positions 24..29)
    bm.free_seq(a)
    # another sequence takes the sliding pool's least recently freed blocks, then its freed blocks 0..5 too
    other = seq_of([7] * 20)
    assert bm.allocate_prefix(other, [])
    assert bm.ensure_slots(other, 32)  # 8 blocks: the whole sliding pool, a's named blocks forgotten
    assert not set(window_blocks) & {b for b in bm.pools[1].free}
    bm.free_seq(other)
    b = seq_of(list(range(30)) + [5])
    assert bm.allocate_prefix(b, [])
    # the global group still holds all of a's blocks, but no hit length has its window in the sliding group
    assert all(bm.pools[0].block_hash[x] is not None for x in range(7))
    assert b.num_computed == 0 and b.block_tables[1] == [] and bm.prefix_hits == 0
    bm.free_seq(b)
    assert bm.num_used == 0


def test_prefix_hit_stops_where_the_sliding_group_last_holds_a_window():
    bm = sliding([16, 8])
    a = seq_of(list(range(30)))
    assert bm.allocate_prefix(a, [])
    advance(bm, a, 30)  # sliding blocks 0..7: 5, 4, .., 0 released (out of the window), then 7, 6 freed
    bm.free_seq(a)
    hog = seq_of([3] * 9)
    assert bm.allocate_prefix(hog, []) and bm.ensure_slots(hog, 12)  # evicts sliding blocks 5, 4, 3 (LRU)
    b = seq_of(list(range(30)) + [1])
    assert bm.allocate_prefix(b, [])
    # the global group holds blocks 0..6, but only 3 blocks (12 tokens) end where the sliding group still has
    # the window: a query at 12 reads positions 7.. (blocks 1, 2); at 16 it would read block 3, evicted
    assert b.num_computed == 12 and bm.prefix_hits == 12
    assert b.block_tables == [[0, 1, 2], [FREED, 1, 2]]
    bm.free_seq(b)
    bm.free_seq(hog)
    assert bm.num_used == 0


def test_fork_shares_the_window_and_copies_the_partial_block_in_every_group():
    bm = sliding()
    parent = seq_of(list(range(18)))
    assert bm.allocate_prefix(parent, [])
    advance(bm, parent, 18)  # blocks 0..4, the last partial; sliding keeps blocks 3 and 4
    children = [seq_of(list(range(18))) for _ in range(3)]
    copies = []
    for child in children:
        assert bm.can_fork(parent)
        copies.append(bm.fork(parent, child))
    for child, pairs in zip(children, copies):
        assert [g for g, _, _ in pairs] == [0, 1]
        for g, src, dst in pairs:
            assert src == parent.block_tables[g][4] and dst == child.block_tables[g][4] and src != dst
        assert child.block_tables[0][:4] == parent.block_tables[0][:4]
        assert child.block_tables[1][:4] == [FREED] * 3 + [parent.block_tables[1][3]]
    assert bm.pools[1].ref_counts[parent.block_tables[1][3]] == 4
    assert bm.pools[0].ref_counts[parent.block_tables[0][0]] == 4
    for s in [parent, *children]:
        s.token_ids.append(50 + s.seq_id % 7)
        advance(bm, s, 1)
        bm.free_seq(s)
    assert bm.num_used == 0


def test_sliding_preemption_and_abort_return_every_block():
    bm = sliding([12, 5])  # the sliding pool holds about one window per sequence: it runs out first
    sched = Scheduler(SchedulerConfig(max_num_seqs=8, max_num_batched_tokens=16), bm)
    seqs = [seq_of(list(range(10 * i, 10 * i + 7))) for i in range(4)]
    for s in seqs:
        sched.add(s)
    sched.schedule()  # admits what fits; then abort one mid-prefill, wherever it is
    sched.finish(seqs[3])
    log = run_until_done(sched, bm, max_new=9)
    assert log and sched.num_preemptions > 0
    for s in seqs[:3]:
        assert s.status is Status.FINISHED and s.token_ids[7:] == [1000 + n for n in range(7, 16)]
    assert bm.num_used == 0 and all(len(pool.free) == pool.num_blocks for pool in bm.pools)


def test_sliding_groups_without_prefix_caching_still_release():
    bm = sliding(caching=False)
    s = seq_of(list(range(25)))
    assert bm.allocate_prefix(s, []) and s.num_computed == 0
    advance(bm, s, 25)
    assert used(bm, 1) == 2 and s.block_hashes == []
    bm.free_seq(s)
    assert bm.num_used == 0
