"""Sequence: one stream of tokens the engine is extending (a request with n > 1 has n of them)."""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass, field
from typing import Any

_ids = itertools.count()


class Status(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    token_ids: list[int]  # prompt, then every generated token
    num_prompt_tokens: int
    max_tokens: int  # the most tokens the sequence may reach in all (prompt + output), within the context
    owner: Any = None  # what the engine tracks this sequence with; opaque to the scheduler
    seq_id: int = field(default_factory=lambda: next(_ids))
    status: Status = Status.WAITING
    num_computed: int = 0  # tokens whose keys and values are in the cache
    num_cached: int = 0  # prompt tokens found in the prefix cache at admission
    block_tables: list[list[int]] = field(default_factory=list)  # one per KV group, all of the same length
    block_hashes: list[int] = field(default_factory=list)  # hash of each full block of the tables, in order
    reuse_prefix: bool = True  # may take blocks from the prefix cache (not mean-pooled embeddings: see pooling.py)
    forks: list[Sequence] = field(default_factory=list)  # the other samples of an n > 1 request: they fork from
    # this one (sharing its blocks) once its prompt is computed
    draft: list[int] = field(default_factory=list)  # tokens proposed to follow (speculative decoding), set by the
    # engine before each step and verified with the last token in one chunk

    @property
    def block_table(self) -> list[int]:
        """The first KV group's table (the only one for models without sliding-window layers)."""
        return self.block_tables[0] if self.block_tables else []

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def num_uncomputed(self) -> int:
        return len(self.token_ids) - self.num_computed
