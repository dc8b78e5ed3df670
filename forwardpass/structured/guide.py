"""A sequence's grammar state (``Guide``) and the batched mask that the sampler applies before every sampler.

Each constrained row's matcher has consumed exactly the row's generated tokens, nothing of the prompt. Masks
for every constrained row of a step are filled in one call into llguidance's executor (``fill_masks``), as a
bitmask of one bit per token, unpacked to a boolean row and applied with ``masked_fill``: a row's logits
depend only on its own matcher, so greedy output stays batch-invariant.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
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


# A forbidden token's logit gets this added: finite, so masking is one add over the rows (numpy's masked select
# is 5x slower), and large enough that exp() of it is exactly 0 and argmax never picks it.
MASKED = np.float32(-3e38)


def _mask_words(guides: Sequence[Guide], vocab_size: int) -> np.ndarray:
    """(R, ceil(vocab_size / 32)) int32, bit j of word w set where token 32 w + j is allowed next, filled in one
    batched call."""
    words = (vocab_size + 31) // 32
    bits = np.zeros((len(guides), words), dtype=np.int32)
    _get_executor().unsafe_compute_mask_ptr(
        [(g.matcher, i) for i, g in enumerate(guides)], bits.ctypes.data, words * 4, len(guides)
    )
    return bits


def _mask_bits(guides: Sequence[Guide], vocab_size: int, forbidden: bool = False) -> np.ndarray:
    """(R, vocab_size) uint8: 1 where each guide allows a token next (where it forbids one with ``forbidden``)."""
    packed = _mask_words(guides, vocab_size).view(
        np.uint8
    )  # little-endian words: byte k holds tokens 8k..8k+7, bit i = token 8k + i
    if forbidden:
        packed = ~packed  # inverting packed bits is 32x cheaper than inverting the unpacked mask
    return np.unpackbits(packed, axis=1, bitorder="little")[:, :vocab_size]


def fill_masks(guides: Sequence[Guide], vocab_size: int) -> torch.Tensor:
    """(R, vocab_size) bool on the CPU: which tokens each guide allows next."""
    return torch.from_numpy(np.ascontiguousarray(_mask_bits(guides, vocab_size))).bool()


def apply_masks(
    x: torch.Tensor,
    guides: Sequence[Guide | None],
    fallback: torch.Tensor | None = None,
    mask_rows: Callable[[torch.Tensor, list[int], np.ndarray], np.ndarray] | None = None,
) -> None:
    """In place on x (B, V) float32: forbid every token a row's guide forbids (rows without a guide untouched).

    On the CPU with the native kernels, `mask_rows` (`kernels.native.mask_fn`) reads the packed bits and writes
    -inf in one pass per row. Without them a forbidden logit gets ``MASKED`` added, in numpy on one thread:
    torch's parallel element-wise kernels cost milliseconds per call when the cores are busy (each waits for its
    threads). If bias or min_tokens left a constrained row nothing the grammar allows, the grammar wins: the
    row's ``fallback`` logits (B, V: before those processors) are used under the mask instead, so the row still
    samples a token that keeps its output valid."""
    rows = [i for i, g in enumerate(guides) if g is not None]
    if not rows:
        return
    if x.device.type != "cpu":
        allowed = torch.from_numpy(np.ascontiguousarray(_mask_bits([guides[i] for i in rows], x.shape[1])))
        return _apply_on_device(x, rows, allowed.to(x.device).bool(), fallback)
    if mask_rows is not None and x.dtype == torch.float32 and x.is_contiguous():
        words = _mask_words([guides[i] for i in rows], x.shape[1])
        for j in np.flatnonzero(mask_rows(x, rows, words)):
            forbidden = ~np.unpackbits(words[j].view(np.uint8), bitorder="little")[: x.shape[1]].view(np.bool_)
            base = (fallback[rows[j]] if fallback is not None else x[rows[j]]).to(torch.float32).numpy()
            x[rows[j]] = torch.from_numpy(np.where(forbidden, -np.inf, base).astype(np.float32))
        return
    forbidden = _mask_bits([guides[i] for i in rows], x.shape[1], forbidden=True)  # (R, V) uint8
    penalty = forbidden.astype(np.float32)
    penalty *= MASKED
    xa = x.numpy()
    every = len(rows) == xa.shape[0]
    if every:
        xa += penalty
    else:
        xa[rows] += penalty
    empty = (xa if every else xa[rows]).max(axis=1) < MASKED / 2  # every allowed token was already -inf
    for j in np.flatnonzero(empty):
        base = (fallback[rows[j]] if fallback is not None else x[rows[j]]).to(torch.float32).numpy()
        xa[rows[j]] = np.where(forbidden[j].view(np.bool_), -np.inf, base)


def _apply_on_device(x: torch.Tensor, rows: list[int], allowed: torch.Tensor, fallback: torch.Tensor | None) -> None:
    idx = torch.tensor(rows, device=x.device)
    sub = x.index_select(0, idx).masked_fill_(~allowed, float("-inf"))  # (R, V)
    empty = torch.isneginf(sub).all(dim=1)  # (R,)
    if bool(empty.any()):
        for j in torch.nonzero(empty).flatten().tolist():
            base = fallback[rows[j]] if fallback is not None else x[rows[j]]
            sub[j] = base.to(sub.dtype).masked_fill(~allowed[j], float("-inf"))
    x.index_copy_(0, idx, sub)
