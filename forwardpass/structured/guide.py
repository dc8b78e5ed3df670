"""A sequence's grammar state (``Guide``) and the batched mask that the sampler applies before every sampler.

Each constrained row's matcher has consumed exactly the row's generated tokens, nothing of the prompt. Masks
for every constrained row of a step are filled in one call into llguidance's executor (``fill_masks``), as a
bitmask of one bit per token, unpacked to a boolean row and applied with ``masked_fill``: a row's logits
depend only on its own matcher, so greedy output stays batch-invariant.
"""
from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

logger = logging.getLogger(__name__)

_executor: Any = None
_executor_lock = threading.Lock()


def _get_executor() -> Any:
    global _executor  # one pool of mask threads per process, as llguidance intends
    with _executor_lock:
        if _executor is None:
            import llguidance

            _executor = llguidance.LLExecutor()
        return _executor


class Guide:
    """One sequence's position in its grammar."""

    def __init__(self, matcher: Any) -> None:
        self.matcher = matcher
        self.num_consumed = 0

    def accept(self, token_id: int) -> bool:
        """Advance past a sampled token; False if the grammar rejects it (the matcher is then in error)."""
        ok = bool(self.matcher.consume_token(token_id))
        if ok:
            self.num_consumed += 1
        else:
            logger.warning("structured output: token %d rejected: %s", token_id, self.matcher.get_error()[:200])
        return ok

    @property
    def done(self) -> bool:
        """The grammar is complete and admits nothing more (only an end-of-generation token)."""
        return bool(self.matcher.is_stopped())

    @property
    def failed(self) -> bool:
        return bool(self.matcher.is_error())

    def fork(self) -> "Guide":
        """An independent copy at the same position."""
        copy = Guide(self.matcher.deep_copy())
        copy.num_consumed = self.num_consumed
        return copy


def _mask_bits(guides: Sequence[Guide], vocab_size: int) -> np.ndarray:
    """(R, vocab_size) bool: which tokens each guide allows next, filled in one batched call."""
    words = (vocab_size + 31) // 32
    bits = np.zeros((len(guides), words), dtype=np.int32)  # (R, W), bit j of word w = token 32w + j
    _get_executor().unsafe_compute_mask_ptr([(g.matcher, i) for i, g in enumerate(guides)], bits.ctypes.data,
                                            words * 4, len(guides))
    # Little-endian words: byte k holds tokens 8k..8k+7, bit i = token 8k + i.
    return np.unpackbits(bits.view(np.uint8), axis=1, bitorder="little")[:, :vocab_size].view(np.bool_)


def fill_masks(guides: Sequence[Guide], vocab_size: int) -> torch.Tensor:
    """(R, vocab_size) bool on the CPU: which tokens each guide allows next."""
    return torch.from_numpy(np.ascontiguousarray(_mask_bits(guides, vocab_size)))


def apply_masks(x: torch.Tensor, guides: Sequence[Guide | None], fallback: torch.Tensor | None = None) -> None:
    """In place on x (B, V) float32: -inf for every token a row's guide forbids (rows without a guide untouched).

    If bias or min_tokens left a constrained row nothing the grammar allows, the grammar wins: the row's
    ``fallback`` logits (B, V: before those processors) are used under the mask instead, so the row still
    samples a token that keeps its output valid. On the CPU this runs in numpy, one thread: torch's parallel
    element-wise kernels cost milliseconds per call when the cores are busy (each waits for its threads)."""
    rows = [i for i, g in enumerate(guides) if g is not None]
    if not rows:
        return
    allowed = _mask_bits([guides[i] for i in rows], x.shape[1])  # (R, V)
    if x.device.type != "cpu":
        return _apply_on_device(x, rows, torch.from_numpy(np.ascontiguousarray(allowed)).to(x.device), fallback)
    xa = x.numpy()
    for j, i in enumerate(rows):
        row = xa[i]
        np.copyto(row, -np.inf, where=~allowed[j])
        if np.isneginf(row).all():
            base = (fallback[i] if fallback is not None else x[i]).to(torch.float32).numpy()
            np.copyto(row, np.where(allowed[j], base, -np.inf))


def _apply_on_device(x: torch.Tensor, rows: list[int], allowed: torch.Tensor, fallback: torch.Tensor | None) -> None:
    idx = torch.tensor(rows, device=x.device)
    sub = x.index_select(0, idx).masked_fill_(~allowed, float("-inf"))  # (R, V)
    empty = torch.isneginf(sub).all(dim=1)  # (R,)
    if bool(empty.any()):
        for j in torch.nonzero(empty).flatten().tolist():
            base = fallback[rows[j]] if fallback is not None else x[rows[j]]
            sub[j] = base.to(sub.dtype).masked_fill(~allowed[j], float("-inf"))
    x.index_copy_(0, idx, sub)
