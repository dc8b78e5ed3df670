"""GET /slots: the engine's ``max_num_seqs`` sequence slots and what each one is doing (llama.cpp's endpoint).

The engine has no numbered slots, only a running batch of at most ``max_num_seqs`` sequences. ``SlotTable``
gives each running sequence a slot number that stays the same while it runs (so two reads of /slots agree on
which slot is which), read from the engine's last published stats: a read never touches engine state.

Each slot: ``id``, ``n_ctx``, ``is_processing``, and for a busy slot ``id_task`` (the engine request id: the
response ``id`` plus ``-<prompt index>``), ``n_prompt_tokens``, ``n_prompt_tokens_processed`` (below
``n_prompt_tokens`` while the prompt is being prefilled) and ``n_decoded``. ``?fail_on_no_slot=1`` answers 503
when every slot is busy, as llama.cpp does.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from typing import Any

from ..engine.llm_engine import SeqProgress

Key = tuple[str, int]  # (request id, k-th sequence of that request): n > 1 runs several sequences per request


class SlotTable:
    """Stable slot numbers for the running sequences."""

    def __init__(self, num_slots: int) -> None:
        self.owners: list[Key | None] = [None] * num_slots
        self._lock = threading.Lock()

    def update(self, running: Sequence[SeqProgress]) -> list[SeqProgress | None]:
        """Reconcile with the running batch; return what each slot holds (None: idle)."""
        seen: Counter[str] = Counter()
        current: dict[Key, SeqProgress] = {}
        for seq in running:
            current[(seq.request_id, seen[seq.request_id])] = seq
            seen[seq.request_id] += 1
        with self._lock:
            owners = [key if key in current else None for key in self.owners]
            placed = set(owners)
            free = iter([i for i, key in enumerate(owners) if key is None])
            for key in current:  # oldest first, so a sequence beyond the slot count (a fork) is the one left out
                if key not in placed:
                    i = next(free, None)
                    if i is None:
                        break
                    owners[i] = key
            self.owners = owners
        return [current[key] if key is not None else None for key in owners]


def describe(slots: list[SeqProgress | None], n_ctx: int) -> list[dict[str, Any]]:
    out = []
    for i, seq in enumerate(slots):
        slot: dict[str, Any] = {"id": i, "n_ctx": n_ctx, "is_processing": seq is not None, "id_task": None}
        if seq is not None:
            slot.update(
                id_task=seq.request_id,
                n_prompt_tokens=seq.num_prompt_tokens,
                n_prompt_tokens_processed=min(seq.num_computed, seq.num_prompt_tokens),
                n_decoded=seq.num_output_tokens,
            )
        out.append(slot)
    return out
