"""Scheduler: which tokens of which sequences run in the next step. No torch here.

Each step hands the runner a number of tokens per sequence: decoding sequences get one, sequences in prefill
get a chunk, all within `max_num_batched_tokens` and `max_num_seqs`, so prefill chunks and decode tokens share
one batch. Running sequences go first (oldest first); waiting ones are admitted while budget and blocks last.
When blocks run out, the newest running sequence is preempted: its blocks are freed and it goes back to the
front of the queue, to be recomputed later (its prefix-cached blocks make that cheap).
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass

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

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> list[tuple[Sequence, int]]:
        """(sequence, number of its next tokens to compute) for this step."""
        budget = self.config.max_num_batched_tokens
        scheduled: list[tuple[Sequence, int]] = []
        for seq in list(self.running):
            if seq.status is not Status.RUNNING or budget == 0:
                continue  # preempted earlier in this loop
            n = min(seq.num_uncomputed, budget)
            if self._reserve(seq, n):
                scheduled.append((seq, n))
                budget -= n
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            seq = self.waiting[0]
            if not self.blocks.allocate_prefix(seq):
                break
            n = min(seq.num_uncomputed, budget)
            if not self.blocks.ensure_slots(seq, seq.num_computed + n):
                self.blocks.free_seq(seq)
                break
            self.waiting.popleft()
            seq.status = Status.RUNNING
            self.running.append(seq)
            scheduled.append((seq, n))
            budget -= n
        return scheduled

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
