"""Block manager and scheduler: pure bookkeeping, no torch, milliseconds."""
from __future__ import annotations

from forwardpass.engine.block_manager import BlockManager
from forwardpass.engine.scheduler import Scheduler, SchedulerConfig
from forwardpass.engine.sequence import Sequence, Status


def seq_of(tokens: list[int], max_tokens: int = 1000) -> Sequence:
    return Sequence(list(tokens), len(tokens), max_tokens)


def compute_all(bm: BlockManager, seq: Sequence) -> None:
    assert bm.ensure_slots(seq, seq.num_tokens)
    seq.num_computed = seq.num_tokens
    bm.on_computed(seq)


def test_allocate_and_free_return_every_block():
    bm = BlockManager(8, 4)
    seqs = [seq_of(list(range(i, i + 10))) for i in range(2)]
    for s in seqs:
        assert bm.allocate_prefix(s)
        compute_all(bm, s)
    assert bm.num_used == 6
    for s in seqs:
        bm.free_seq(s)
    assert bm.num_used == 0 and bm.num_free == 8


def test_prefix_blocks_are_shared_and_reference_counted():
    bm = BlockManager(16, 4)
    a = seq_of(list(range(10)))
    assert bm.allocate_prefix(a) and a.num_computed == 0
    compute_all(bm, a)  # blocks [0-3], [4-7] full and named; [8, 9] partial
    b = seq_of(list(range(9)) + [99])
    assert bm.allocate_prefix(b)
    assert b.num_computed == 8 and b.block_table == a.block_table[:2]
    assert [bm.pools[0].ref_counts[x] for x in a.block_table[:2]] == [2, 2]
    bm.free_seq(a)
    assert [bm.pools[0].ref_counts[x] for x in b.block_table] == [1, 1]
    bm.free_seq(b)
    assert bm.num_used == 0


def test_freed_blocks_are_revived_by_a_later_prefix_hit():
    bm = BlockManager(16, 4)
    a = seq_of(list(range(12)))
    bm.allocate_prefix(a)
    compute_all(bm, a)
    table = list(a.block_table)
    bm.free_seq(a)
    b = seq_of(list(range(13)))
    assert bm.allocate_prefix(b)
    assert b.block_table == table and b.num_cached == 12


def test_a_fully_cached_prompt_still_computes_its_last_block():
    bm = BlockManager(16, 4)
    a = seq_of(list(range(8)))
    bm.allocate_prefix(a)
    compute_all(bm, a)
    b = seq_of(list(range(8)))
    assert bm.allocate_prefix(b)
    assert b.num_computed == 4  # one token at least must run to produce logits


def test_lru_reuse_forgets_old_hashes():
    bm = BlockManager(4, 4)
    a = seq_of(list(range(16)))
    bm.allocate_prefix(a)
    compute_all(bm, a)
    bm.free_seq(a)
    c = seq_of([7] * 16)
    assert bm.allocate_prefix(c) and c.num_computed == 0
    compute_all(bm, c)  # reuses all four blocks: a's prefix is gone
    d = seq_of(list(range(16)))
    bm.free_seq(c)
    assert bm.allocate_prefix(d) and d.num_computed == 0


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
        log.append([(s.seq_id, n) for s, n in batch])
        for s, n in batch:
            s.num_computed += n
            bm.on_computed(s)
            if s.num_computed == s.num_tokens:
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
