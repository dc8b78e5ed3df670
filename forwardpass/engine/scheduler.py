"""Scheduler: which tokens of which sequences run in the next step. No torch here.

Each step hands the runner a number of tokens per sequence: decoding sequences get one, sequences in prefill
get a chunk, all within `max_num_batched_tokens` and `max_num_seqs`, so prefill chunks and decode tokens share
one batch. Running sequences go first (oldest first); waiting ones are admitted while budget and blocks last.
When blocks run out, the newest running sequence is preempted: its blocks are freed and it goes back to the
front of the queue, to be recomputed later (its prefix-cached blocks make that cheap).

A step: `schedule()` says what runs (`SchedulerOutput`), the runner computes it, then `update(output)` records
the computed tokens and forks the other samples of an n > 1 request from the first one, whose prompt is now in
the cache; the block copies that takes are the runner's to do.

Speculative decoding: a decoding sequence with proposed tokens (`Sequence.draft`) runs them after its last
token in the same chunk when the budget and free blocks allow (never preempting anyone for them); the engine
rolls the rejected ones back out of the cache (`BlockManager.rollback`) once it has verified them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .block_manager import BlockManager
from .sequence import Sequence, Status


@dataclass
class SchedulerConfig:
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 512

    def __post_init__(self) -> None:
        for name in ("max_num_seqs", "max_num_batched_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass
class ScheduledSeq:
    """`num_tokens` of `seq`'s next tokens run this step, from position `start`."""

    seq: Sequence
    num_tokens: int
    start: int
    draft: list[int] = field(default_factory=list)  # proposed tokens verified after the last one

    @property
    def token_ids(self) -> list[int]:
        """The tokens this step computes: the sequence's, then the proposals."""
        return self.seq.token_ids[self.start : self.start + self.num_tokens] + self.draft

    @property
    def samples(self) -> bool:
        """Whether this step reaches the end of the sequence, so its next token is sampled."""
        return self.start + self.num_tokens == self.seq.num_tokens


@dataclass
class SchedulerOutput:
    """What one step runs, oldest running sequence first, then the newly admitted ones."""

    scheduled: list[ScheduledSeq]
    block_copies: list[tuple[int, int, int]] = field(default_factory=list)  # (group, source, destination) to
    # copy before the run: the last block of a whole cached prompt whose last token runs again

    def __bool__(self) -> bool:
        return bool(self.scheduled)


@dataclass
class StepUpdate:
    """What `Scheduler.update` did after the run: samples forked (each sampling from the logits of the sequence
    it forked from) and the (group, source, destination) blocks the runner must copy for them."""

    forked: dict[int, list[Sequence]]  # parent seq_id -> its forks that joined the running batch
    block_copies: list[tuple[int, int, int]]


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager) -> None:
        self.config = config
        self.blocks = block_manager
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        self.waiting.append(seq)

    def add_running(self, seq: Sequence) -> None:
        """A sequence that already holds its blocks (a fork) joins the running batch directly."""
        seq.status = Status.RUNNING
        self.running.append(seq)

    def schedule(self) -> SchedulerOutput:
        """Which sequences run this step, and how many of their next tokens each."""
        budget = self.config.max_num_batched_tokens
        scheduled: list[ScheduledSeq] = []
        copies: list[tuple[int, int, int]] = []
        for seq in list(self.running):
            if seq.status is not Status.RUNNING or budget == 0:
                continue  # preempted earlier in this loop
            n = min(seq.num_uncomputed, budget)
            draft = self._draft_slots(seq, budget - n)
            if draft or self._reserve(seq, n):
                scheduled.append(ScheduledSeq(seq, n, seq.num_computed, draft))
                budget -= n + len(draft)
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            seq_copies: list[tuple[int, int, int]] = []
            if not self.blocks.allocate_prefix(seq, seq_copies):
                break
            n = min(seq.num_uncomputed, budget)
            if not self.blocks.ensure_slots(seq, seq.num_computed + n):
                self.blocks.free_seq(seq)
                break
            copies += seq_copies
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            scheduled.append(ScheduledSeq(seq, n, seq.num_computed))
            budget -= n
        return SchedulerOutput(scheduled, copies)

    def update(self, output: SchedulerOutput) -> StepUpdate:
        """After the run: the scheduled tokens are in the cache; sequences whose prompt is now computed fork
        their pending samples (`Sequence.forks`)."""
        forked: dict[int, list[Sequence]] = {}
        copies: list[tuple[int, int, int]] = []
        for s in output.scheduled:
            s.seq.num_computed += s.num_tokens
            self.blocks.on_computed(s.seq)
            if s.seq.forks and s.samples:
                forked[s.seq.seq_id] = self._fork(s.seq, copies)
        return StepUpdate(forked, copies)

    def _fork(self, parent: Sequence, copies: list[tuple[int, int, int]]) -> list[Sequence]:
        """Full blocks are shared, the partial last block is copied (copy-on-write at the divergence); a sample
        for whose copy no block is free is queued to compute the prompt itself (prefix-cached)."""
        forked = []
        for child in parent.forks:
            if not self.blocks.can_fork(parent):
                self.add(child)
                continue
            copies.extend(self.blocks.fork(parent, child))
            self.add_running(child)
            forked.append(child)
        parent.forks = []
        return forked

    def _draft_slots(self, seq: Sequence, budget: int) -> list[int]:
        """The proposals of a decoding sequence that fit the budget, with their blocks (and its next token's)
        reserved; [] where they do not fit without preempting."""
        draft = seq.draft[:budget] if seq.num_uncomputed == 1 else []
        if draft and self.blocks.ensure_slots(seq, seq.num_computed + 1 + len(draft)):
            return draft
        return []

    def _reserve(self, seq: Sequence, n: int) -> bool:
        """Blocks for `n` more tokens of a running sequence, preempting the newest ones if needed."""
        while not self.blocks.ensure_slots(seq, seq.num_computed + n):
            victim = self.running[-1]
            self.preempt(victim)
            if victim is seq:
                return False
        return True

    def preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        seq.draft = []
        self.blocks.free_seq(seq)
        seq.status = Status.WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def finish(self, seq: Sequence) -> None:
        """Remove a sequence wherever it is (done or aborted) and free its blocks at once."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
        elif seq.status is Status.WAITING and seq in self.waiting:
            self.waiting.remove(seq)
        if seq.block_tables:
            self.blocks.free_seq(seq)
        seq.status = Status.FINISHED
