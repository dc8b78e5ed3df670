"""Embedding requests: a prompt whose final hidden states are pooled into one vector instead of sampled from.

An embedding request runs through the scheduler like any prompt (chunked prefill, continuous batching next to
generating requests, preemption, aborts); when its last prompt chunk has run it finishes with the pooled,
L2-normalized vector. The pooling comes from the GGUF (``{arch}.pooling_type``, llama.cpp's enum: 1 mean, 2 cls,
3 last); models without it (decoder LMs) get mean pooling over every prompt position.

Mean and cls pooling need the hidden state of every position (or the first), so those requests never take blocks
from the prefix cache (a hit would skip positions); last pooling needs only the last position, which always runs.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..outputs import EmbeddingOutput
from .sequence import Sequence

logger = logging.getLogger(__name__)

POOLING_METHODS = ("mean", "cls", "last")
_GGUF_POOLING = {1: "mean", 2: "cls", 3: "last"}  # llama.cpp's LLAMA_POOLING_TYPE_*; 0 (none) and 4 (rank) -> mean


def pooling_from_metadata(metadata: dict[str, Any], arch: str) -> str:
    """The pooling a model was trained for, from ``{arch}.pooling_type``; mean when absent or not a pooling."""
    value = metadata.get(f"{arch}.pooling_type")
    if value is None:
        return "mean"
    try:
        method = _GGUF_POOLING.get(int(value))
    except (TypeError, ValueError):
        method = None
    if method is None:
        logger.warning("%s.pooling_type = %r is not a pooling of one vector per input; using mean", arch, value)
        return "mean"
    return method


class Pooler:
    """Accumulates one sequence's final hidden states chunk by chunk (a chunk may be any part of the prompt)."""

    def __init__(self, seq: Sequence, request: "EmbedRequest", method: str) -> None:
        if method not in POOLING_METHODS:
            raise ValueError(f"pooling must be one of {POOLING_METHODS}, got {method!r}")
        self.seq = seq
        self.request = request
        self.method = method
        self._sum: torch.Tensor | None = None  # (d_model,) float32 (mean: the sum so far; cls/last: the vector)
        self.finished = False

    @property
    def reuses_prefix(self) -> bool:
        return self.method == "last"

    def add(self, hidden: torch.Tensor, start: int) -> None:
        """`hidden`: (n, d_model) final hidden states of positions start .. start + n - 1."""
        if start == 0:  # the first chunk, or a recompute after preemption: start over
            self._sum = None
        if self.method == "mean":
            part = hidden.float().sum(0)
            self._sum = part if self._sum is None else self._sum + part
        elif self.method == "cls":
            if start == 0:
                self._sum = hidden[0].float().clone()
        else:
            self._sum = hidden[-1].float().clone()

    def result(self, normalize: bool = True) -> torch.Tensor:
        assert self._sum is not None, "pooled before any hidden state arrived"
        v = self._sum / self.seq.num_prompt_tokens if self.method == "mean" else self._sum
        return torch.nn.functional.normalize(v, dim=0) if normalize else v

    def abort(self) -> None:
        self.finished = True


@dataclass
class EmbedRequest:
    """One input of an embedding request: the engine keeps it in `requests` next to generation requests."""

    request_id: str
    prompt_token_ids: list[int]
    method: str
    normalize: bool = True
    completions: list[Pooler] = field(default_factory=list)  # exactly one; named as Request's for abort()
    embedding: torch.Tensor | None = None
    arrival: float = field(default_factory=time.perf_counter)
    finish_time: float | None = None

    @property
    def pooler(self) -> Pooler:
        return self.completions[0]

    @property
    def finished(self) -> bool:
        return self.pooler.finished

    def snapshot(self) -> EmbeddingOutput:
        emb = self.embedding.tolist() if self.embedding is not None else None
        return EmbeddingOutput(self.request_id, self.prompt_token_ids, emb, self.pooler.seq.num_cached)
