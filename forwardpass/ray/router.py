"""Prefix-aware routing over engine replicas. Pure Python (no Ray): the ingress asks `choose`, tells `started`
and `finished`, and marks replicas down and up.

A prompt's first full blocks (the engine's prefix-cache block size) are hashed as a chain, the way the engine's
block manager names cached blocks, so two prompts sharing their first k blocks share their first k hashes. The
router remembers which replica was last sent each hash: a prompt goes to the replica holding its longest
remembered prefix (the least loaded among several), unless that replica is overloaded against the least loaded
one; a prompt sharing nothing goes to the least loaded replica. A replica that goes down is forgotten (its
replacement starts with an empty cache).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

DEFAULT_BLOCK_SIZE = 16  # the engine's KV block (llm.BLOCK_SIZE): a prefix cache hit is whole blocks
DEFAULT_MAX_BLOCKS = 128  # blocks of a prompt that count (2,048 tokens): enough to tell prefixes apart
DEFAULT_MAX_ENTRIES = 1 << 18  # remembered hashes, least recently routed dropped first


class NoReplicaError(Exception):
    """Every replica is down."""


def prefix_hashes(token_ids: list[int], block_size: int, max_blocks: int) -> list[bytes]:
    """The chain hash of each full block among the first `max_blocks`: hash i covers tokens [0, (i + 1) * bs)."""
    out, parent = [], b""
    for b in range(min(len(token_ids) // block_size, max_blocks)):
        block = token_ids[b * block_size : (b + 1) * block_size]
        parent = hashlib.blake2b(parent + b",".join(str(t).encode() for t in block), digest_size=16).digest()
        out.append(parent)
    return out


class PrefixRouter:
    """`n` replicas. `imbalance`: a prefix's replica is skipped when it has more than `imbalance` times (plus
    `slack`) the in-flight requests of the least loaded one, so one hot prefix cannot pile everything on one
    replica."""

    def __init__(
        self,
        n: int,
        block_size: int = DEFAULT_BLOCK_SIZE,
        max_blocks: int = DEFAULT_MAX_BLOCKS,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        imbalance: float = 2.0,
        slack: int = 4,
    ) -> None:
        if n < 1:
            raise ValueError(f"replicas must be at least 1, got {n}")
        self.n, self.block_size, self.max_blocks, self.max_entries = n, block_size, max_blocks, max_entries
        self.imbalance, self.slack = imbalance, slack
        self.load = [0] * n  # in-flight requests per replica
        self.up = [True] * n
        self.routed = [0] * n  # requests sent to each replica, ever
        self.prefix_routed = [0] * n  # of which by a remembered prefix
        self._owner: OrderedDict[bytes, int] = OrderedDict()  # block chain hash -> replica last sent it

    def choose(self, token_ids: list[int]) -> int:
        """The replica for a prompt (`NoReplicaError` when all are down). Does not count it: call `started`."""
        alive = [i for i in range(self.n) if self.up[i]]
        if not alive:
            raise NoReplicaError("no engine replica is up")
        least = min(alive, key=lambda i: (self.load[i], self.routed[i]))
        for h in reversed(prefix_hashes(token_ids, self.block_size, self.max_blocks)):  # longest prefix first
            owner = self._owner.get(h)
            if owner is not None and self.up[owner]:
                if self.load[owner] <= self.imbalance * self.load[least] + self.slack:
                    return owner
                break
        return least

    def started(self, replica: int, token_ids: list[int], by_prefix: bool = False) -> None:
        """A prompt was sent to `replica`: it now holds the prompt's blocks."""
        self.load[replica] += 1
        self.routed[replica] += 1
        self.prefix_routed[replica] += by_prefix
        for h in prefix_hashes(token_ids, self.block_size, self.max_blocks):
            self._owner[h] = replica
            self._owner.move_to_end(h)
        while len(self._owner) > self.max_entries:
            self._owner.popitem(last=False)

    def finished(self, replica: int) -> None:
        self.load[replica] = max(0, self.load[replica] - 1)

    def holds_prefix(self, replica: int, token_ids: list[int]) -> bool:
        """Whether `replica` is remembered for the prompt's first block (for counting prefix-routed requests)."""
        hashes = prefix_hashes(token_ids, self.block_size, 1)
        return bool(hashes) and self._owner.get(hashes[0]) == replica

    def mark_down(self, replica: int) -> None:
        """`replica` stopped answering: route nothing there, and forget what it held."""
        self.up[replica] = False
        for h in [h for h, r in self._owner.items() if r == replica]:
            del self._owner[h]

    def mark_up(self, replica: int) -> None:
        self.up[replica] = True
