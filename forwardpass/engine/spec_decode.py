"""Speculative decoding: who proposes the next tokens, how many, and the figures of how it went. No torch here.

Each step, before scheduling, `Speculator.propose` gives every decoding sequence up to k proposed tokens
(`Sequence.draft`). The scheduler runs such a sequence as a short chunk (its last sampled token, then the
proposals), the runner computes logits at every position exactly as decoding would, and the engine's rejection
sampler (`forwardpass/rejection.py`) keeps the longest acceptable prefix plus one token of its own; the block
manager then rolls the rejected positions back out of the KV cache (`BlockManager.rollback`).

Proposers are deterministic functions of the sequence so far, so every proposal is a point mass q = delta(d):
the rejection step accepts d with probability p(d) and otherwise samples from p without d, which leaves the
target distribution unchanged (and at temperature 0 reduces to "accept while equal to the argmax").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from .sequence import Sequence


class Proposer(Protocol):
    def propose(self, seqs: list[Sequence], ks: list[int]) -> list[list[int]]:
        """Up to `ks[i]` proposed next tokens for each of `seqs` (each has one uncomputed token: its last)."""
        ...

    def release(self, seq: Sequence) -> None:
        """Forget a sequence (finished or aborted)."""
        ...


class NgramProposer:
    """Prompt lookup: find the latest earlier occurrence of the sequence's last n tokens (n from `max_n` down to
    `min_n`) and propose the tokens that followed it."""

    def __init__(self, min_n: int, max_n: int) -> None:
        self.min_n, self.max_n = min_n, max_n

    def propose(self, seqs: list[Sequence], ks: list[int]) -> list[list[int]]:
        return [self.lookup(seq.token_ids, k) for seq, k in zip(seqs, ks)]

    def lookup(self, tokens: list[int], k: int) -> list[int]:
        size = len(tokens)
        if k <= 0 or size < self.min_n + 1:
            return []
        last = tokens[-1]
        # candidate ends: earlier positions holding the last token, latest first (not the last token itself)
        ends = [i for i in range(size - 2, -1, -1) if tokens[i] == last]
        for n in range(min(self.max_n, size - 1), self.min_n - 1, -1):
            suffix = tokens[size - n :]
            for end in ends:
                if end + 1 >= n and tokens[end + 1 - n : end + 1] == suffix:
                    return tokens[end + 1 : end + 1 + k]
        return []

    def release(self, seq: Sequence) -> None:
        pass


@dataclass
class AdaptiveK:
    """A sequence's proposal length: grows by one after a step whose proposals were all accepted, drops to one
    more than the accepted count after a rejection; a proposal rejected outright at k = 1 pauses proposing for
    a number of steps that doubles with each such miss (up to `max_pause`), so free text pays for few rows."""

    k: int
    max_k: int
    pause: int = 0  # steps left without proposals
    misses: int = 0  # consecutive outright rejections at k = 1
    max_pause: int = 16

    def wanted(self) -> int:
        if self.pause:
            self.pause -= 1
            return 0
        return self.k

    def record(self, proposed: int, accepted: int) -> None:
        if accepted == proposed:
            self.k, self.misses = min(self.max_k, self.k + 1), 0
            return
        if accepted == 0 and self.k == 1:
            self.misses += 1
            self.pause = min(self.max_pause, 1 << self.misses)
        else:
            self.misses = 0
        self.k = max(1, min(self.max_k, accepted + 1))


@dataclass
class SpecStats:
    """Totals since the engine started: verification steps (a sequence with proposals), tokens proposed and
    tokens accepted. Each step also yields one token of the target's own, so mean accepted length = tokens a
    verification step produced on average = 1 + accepted / steps."""

    steps: int = 0
    proposed: int = 0
    accepted: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def mean_accepted_length(self) -> float:
        return 1.0 + self.accepted / self.steps if self.steps else 0.0

    def as_dict(self) -> dict[str, float]:
        return {
            "spec_steps": self.steps,
            "spec_proposed_tokens": self.proposed,
            "spec_accepted_tokens": self.accepted,
            "spec_acceptance_rate": round(self.acceptance_rate, 4),
            "spec_mean_accepted_length": round(self.mean_accepted_length, 4),
        }


@dataclass
class Speculator:
    """Per-sequence k and the proposer: fills `Sequence.draft` of the decoding sequences each step and records
    the verdicts."""

    proposer: Proposer
    max_k: int
    adaptive: bool = True
    stats: SpecStats = field(default_factory=SpecStats)
    _k: dict[int, tuple[Sequence, AdaptiveK]] = field(default_factory=dict)  # seq_id -> its proposal length

    def propose(self, running: list[Sequence], limits: list[int]) -> None:
        """Set `draft` on every running sequence: proposals for those decoding, [] for the rest. `limits[i]`:
        the most proposals sequence i may take (its remaining tokens less the one the target adds). Sequences
        no longer running are forgotten (their proposer state released)."""
        live = {seq.seq_id for seq in running}
        for seq_id in [i for i in self._k if i not in live]:
            self.release(self._k[seq_id][0])
        seqs, ks = [], []
        for seq, limit in zip(running, limits):
            seq.draft = []
            if seq.num_uncomputed != 1 or seq.num_output_tokens == 0 or seq.forks:
                continue
            _, state = self._k.setdefault(seq.seq_id, (seq, AdaptiveK(self.max_k, self.max_k)))
            k = min(state.wanted() if self.adaptive else self.max_k, limit)
            if k > 0:
                seqs.append(seq)
                ks.append(k)
        if seqs:
            for seq, draft in zip(seqs, self.proposer.propose(seqs, ks)):
                seq.draft = draft

    def record(self, seq: Sequence, proposed: int, accepted: int) -> None:
        self.stats.steps += 1
        self.stats.proposed += proposed
        self.stats.accepted += accepted
        entry = self._k.get(seq.seq_id)
        if entry is not None:
            entry[1].record(proposed, accepted)

    def release(self, seq: Sequence) -> None:
        self._k.pop(seq.seq_id, None)
        seq.draft = []
        self.proposer.release(seq)
