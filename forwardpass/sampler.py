"""The batched token sampler: logits ``(B, V)`` plus per-row state -> one token per row.

Every row carries its own ``SamplingParams``; the batch is processed with per-row parameter tensors, so rows
with different settings share one set of kernels. The order (vLLM's and llama.cpp's) is: logit bias, penalties,
min_tokens masking, the grammar mask of constrained rows (structured output); then greedy rows take the argmax
and the others go through temperature, top-k, top-p, min-p and a draw from their own ``torch.Generator``. A row's
token therefore depends only on its logits, its params and its generator, never on what else is in the batch.

Rows without top-k may draw through `native_draw` instead (the native kernels' `sample_rows` on CPU):
temperature, top-p, min-p and the same draw from the same uniform numbers, computed a row at a time in a few
vector passes.

The same code runs on CPU and CUDA tensors. On CUDA the only device -> host sync is the single ``.tolist()`` at
the end; small parameter tensors go host -> device through pinned memory so that they do not sync either. (On
CPU, top-p also reads one flag back to avoid a full sort, which costs nothing there.)
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from forwardpass.kernels.native import torch_argmax
from forwardpass.sampling import SamplingParams
from forwardpass.structured.guide import Guide, apply_masks

logger = logging.getLogger(__name__)

_NEG_INF = float("-inf")
# Tokens per block in the two-level inverse-CDF draw.
_DRAW_BLOCK = 256
# How many of the most likely tokens top-p looks at, in turn, before it falls back to a full sort (CPU only).
TOP_P_CANDIDATES = (256, 4096)


def _to_device(values: list, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A 1-D tensor on ``device`` without a device sync (a pageable host->CUDA copy synchronizes the stream)."""
    tensor = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


class SamplingState:
    """The sampler's memory of one sequence: params, random generator, token history and penalty counts.

    ``eos_token_ids`` (from the model) are masked together with ``params.stop_token_ids`` until
    ``params.min_tokens`` tokens have been generated. Sample ``sample_index`` of an ``n > 1`` request is seeded
    with ``params.seed + sample_index``; without a seed, a fresh random seed is drawn (kept in ``self.seed``).
    Device tensors (generator, counts) are created on the first ``Sampler.sample`` call, which fixes the
    vocabulary size and device. ``Sampler.sample`` appends each chosen token with ``append``.
    """

    def __init__(
        self,
        params: SamplingParams,
        prompt_token_ids: Sequence[int] = (),
        *,
        eos_token_ids: Sequence[int] = (),
        sample_index: int = 0,
    ) -> None:
        self.params = params
        self.prompt_token_ids = list(prompt_token_ids)
        self.output_token_ids: list[int] = []
        eos = () if params.ignore_eos else tuple(eos_token_ids)
        self._min_tokens_ids = tuple(dict.fromkeys(eos + params.stop_token_ids))  # dedup, keep order
        base = params.seed if params.seed is not None else secrets.randbits(64)
        self.seed = (base + sample_index) % 2**64
        self.vocab_size: int | None = None
        self.device: torch.device | None = None
        self._generator: torch.Generator | None = None
        self._seen: torch.Tensor | None = None  # (V,) bool: in prompt or output; repetition penalty
        self._counts: torch.Tensor | None = None  # (V,) int32: occurrences in output; presence/frequency
        self._n_synced = 0  # output tokens already folded into _seen/_counts
        self._bias: tuple[torch.Tensor, torch.Tensor] | None = None  # (n,) int64 ids, (n,) float32 values
        self._stop_ids: torch.Tensor | None = None  # (m,) int64, masked while below min_tokens
        self.guide: Guide | None = None  # the grammar state of a structured-output row (set by the engine)

    def append(self, token_id: int) -> None:
        """Record a generated token (counted for penalties and ``min_tokens`` from the next step on)."""
        if self.vocab_size is not None and not 0 <= token_id < self.vocab_size:
            raise ValueError(f"token id {token_id} is out of vocabulary (vocab size {self.vocab_size})")
        self.output_token_ids.append(token_id)
        if self.guide is not None:
            self.guide.accept(token_id)

    @property
    def generator(self) -> torch.Generator:
        """This row's random generator, on the device of the logits it samples from."""
        if self._generator is None:
            raise RuntimeError("SamplingState is not bound to a device yet (call Sampler.sample first)")
        return self._generator

    def bind(self, vocab_size: int, device: torch.device) -> None:
        """Validate ids against the vocabulary and create the device tensors; a no-op once bound."""
        if self.vocab_size is not None:
            if (vocab_size, device) != (self.vocab_size, self.device):
                raise ValueError(
                    f"SamplingState bound to vocab {self.vocab_size} on {self.device}, "
                    f"now given vocab {vocab_size} on {device}"
                )
            return
        params = self.params
        params.verify_vocab(vocab_size)
        for name, ids in (
            ("prompt_token_ids", self.prompt_token_ids),
            ("output_token_ids", self.output_token_ids),
            ("eos_token_ids", self._min_tokens_ids),
        ):
            bad = [i for i in ids if not 0 <= i < vocab_size]
            if bad:
                raise ValueError(f"{name} has token id {bad[0]}, out of vocabulary (vocab size {vocab_size})")
        self._generator = torch.Generator(device=device)
        self._generator.manual_seed(self.seed)
        if params.repetition_penalty != 1.0:
            self._seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            if self.prompt_token_ids:
                self._seen[_to_device(self.prompt_token_ids, torch.int64, device)] = True
        if params.presence_penalty != 0.0 or params.frequency_penalty != 0.0:
            self._counts = torch.zeros(vocab_size, dtype=torch.int32, device=device)
        if params.logit_bias:
            self._bias = (
                _to_device(list(params.logit_bias), torch.int64, device),
                _to_device(list(params.logit_bias.values()), torch.float32, device),
            )
        if params.min_tokens > 0 and self._min_tokens_ids:
            self._stop_ids = _to_device(list(self._min_tokens_ids), torch.int64, device)
        self.vocab_size, self.device = vocab_size, device
        logger.debug("sampling state bound: seed=%d vocab=%d device=%s", self.seed, vocab_size, device)

    def logit_bias(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``params.logit_bias`` as device tensors: (n,) int64 token ids and (n,) float32 biases."""
        return self._bias

    def banned_for_min_tokens(self) -> torch.Tensor | None:
        """(m,) int64 EOS and stop token ids to mask this step, or None once ``min_tokens`` is reached."""
        if self._stop_ids is None or len(self.output_token_ids) >= self.params.min_tokens:
            return None
        return self._stop_ids

    def seen_mask(self) -> torch.Tensor:
        """(V,) bool: tokens in the prompt or the output so far (repetition penalty only)."""
        self._sync()
        assert self._seen is not None, "seen_mask needs repetition_penalty != 1"
        return self._seen

    def output_counts(self) -> torch.Tensor:
        """(V,) int32: how often each token occurs in the output so far (presence/frequency penalty only)."""
        self._sync()
        assert self._counts is not None, "output_counts needs a presence or frequency penalty"
        return self._counts

    def _sync(self) -> None:
        """Fold tokens appended since the last call into the dense tensors: O(new tokens), not O(V)."""
        new = self.output_token_ids[self._n_synced :]
        self._n_synced = len(self.output_token_ids)
        if not new:
            return
        if len(new) == 1:  # the common decode step: Python-int indexing launches kernels but copies nothing
            if self._seen is not None:
                self._seen[new[0]] = True
            if self._counts is not None:
                self._counts[new[0]] += 1
            return
        ids = _to_device(new, torch.int64, self.device)
        if self._seen is not None:
            self._seen[ids] = True
        if self._counts is not None:
            self._counts.index_put_((ids,), torch.ones_like(ids, dtype=torch.int32), accumulate=True)


@dataclass
class SamplerOutput:
    """One sampler step for a batch of B rows.

    ``logprobs`` and ``top_logprobs`` are None unless some row asked for logprobs; then ``logprobs[i]`` is the
    chosen token's raw log-probability (None for rows that did not ask), and ``top_logprobs[i]`` lists
    ``params.logprobs`` ``(token_id, logprob)`` pairs, most likely first (empty for rows that did not ask).
    """

    token_ids: list[int]
    logprobs: list[float | None] | None = None
    top_logprobs: list[list[tuple[int, float]]] | None = None


class Sampler:
    """Turns a batch of logits into one token per row; see the module docstring for the order of operations.

    `argmax` takes the greedy rows' tokens (the native kernels' scan on CPU: `kernels.native.argmax_fn`);
    `mask_rows` writes constrained rows' grammar masks (`kernels.native.mask_fn`; None: numpy)."""

    def __init__(
        self,
        argmax: Callable[[torch.Tensor], torch.Tensor] = torch_argmax,
        mask_rows: Callable[[torch.Tensor, list[int], np.ndarray], np.ndarray] | None = None,
        native_draw: Callable[..., torch.Tensor] | None = None,
    ) -> None:
        self.argmax = argmax
        self.mask_rows = mask_rows
        self.native_draw = native_draw

    def sample(self, logits: torch.Tensor, rows: Sequence[SamplingState]) -> SamplerOutput:
        """Pick one token per row of ``logits`` (B, V), append it to that row's state, and return them.

        ``logits`` is not modified. Raises ``ValueError`` on a shape mismatch or an out-of-vocabulary id.
        """
        raw = self.apply_logits_processors(logits, rows)  # binds rows, validates the shape
        tokens = _choose_tokens(raw, rows, self.argmax, self.native_draw)  # (B,) int64
        logprobs = log_softmax_if_needed(logits, rows)
        out = gather_output(tokens, logprobs, rows)
        for state, token in zip(rows, out.token_ids):
            state.append(token)
        return out

    def apply_logits_processors(self, logits: torch.Tensor, rows: Sequence[SamplingState]) -> torch.Tensor:
        """Return a float32 copy of ``logits`` (B, V) after logit bias, penalties, min_tokens masking and the
        grammar masks of constrained rows."""
        if logits.dim() != 2 or logits.shape[0] != len(rows):
            raise ValueError(f"logits must have shape (len(rows), vocab) = ({len(rows)}, V), got {tuple(logits.shape)}")
        vocab_size = logits.shape[1]
        for state in rows:
            state.bind(vocab_size, logits.device)
        if logits.device.type == "cpu":
            # numpy's copy: one thread, ~10 us for a 49k row; torch's parallel copy waits for its pool, which took
            # ~30 ms per call on two busy cores
            x = torch.from_numpy(logits.to(torch.float32).numpy().copy())  # (B, V)
        else:
            x = logits.to(torch.float32, copy=True)  # (B, V)
        for i, state in enumerate(rows):
            bias = state.logit_bias()
            if bias is not None:
                x[i].index_add_(0, *bias)
        _apply_repetition_penalty(x, rows)
        _apply_presence_frequency(x, rows)
        for i, state in enumerate(rows):
            banned = state.banned_for_min_tokens()
            if banned is not None:
                x[i].index_fill_(0, banned, _NEG_INF)
        apply_masks(x, [s.guide for s in rows], fallback=logits, mask_rows=self.mask_rows)
        return x


def _row_indices(wanted: list[bool], device: torch.device) -> torch.Tensor:
    """(R,) int64: the batch positions where ``wanted`` is true."""
    return _to_device([i for i, w in enumerate(wanted) if w], torch.int64, device)


def _row_values(values: list[float], device: torch.device) -> torch.Tensor:
    """A (R, 1) float32 column, to broadcast one parameter per row over the vocabulary."""
    return _to_device(values, torch.float32, device).unsqueeze(1)


def _apply_repetition_penalty(x: torch.Tensor, rows: Sequence[SamplingState]) -> None:
    """In place on x (B, V): seen tokens' positive logits are divided by the penalty, negative ones multiplied."""
    wanted = [s.params.repetition_penalty != 1.0 for s in rows]
    if not any(wanted):
        return
    picked = [s for s, w in zip(rows, wanted) if w]
    idx = _row_indices(wanted, x.device)
    seen = torch.stack([s.seen_mask() for s in picked])  # (P, V) bool
    penalty = _row_values([s.params.repetition_penalty for s in picked], x.device)  # (P, 1)
    sub = x.index_select(0, idx)  # (P, V)
    # x / penalty where x > 0, x * penalty elsewhere; clamps instead of a nested where (3x faster on CPU) give
    # the same bits, since adding the other branch's exact zero changes nothing.
    sub = torch.where(seen, sub.clamp_min(0.0) / penalty + sub.clamp_max(0.0) * penalty, sub)
    x.index_copy_(0, idx, sub)


def _apply_presence_frequency(x: torch.Tensor, rows: Sequence[SamplingState]) -> None:
    """In place on x (B, V): subtract frequency * count + presence * (count > 0), over output tokens."""
    wanted = [s.params.presence_penalty != 0.0 or s.params.frequency_penalty != 0.0 for s in rows]
    if not any(wanted):
        return
    picked = [s for s, w in zip(rows, wanted) if w]
    idx = _row_indices(wanted, x.device)
    counts = torch.stack([s.output_counts() for s in picked]).to(torch.float32)  # (P, V)
    presence = _row_values([s.params.presence_penalty for s in picked], x.device)  # (P, 1)
    frequency = _row_values([s.params.frequency_penalty for s in picked], x.device)  # (P, 1)
    sub = x.index_select(0, idx) - (frequency * counts + presence * (counts > 0))
    x.index_copy_(0, idx, sub)


def apply_top_k(x: torch.Tensor, top_k: list[int]) -> torch.Tensor:
    """Mask x (R, V) to -inf below each row's k-th largest value (ties with it are kept); k <= 0 = off."""
    vocab = x.shape[1]
    ks = [min(k, vocab) if k > 0 else 0 for k in top_k]
    if not any(ks):
        return x
    top_vals = x.topk(max(ks), dim=-1).values  # (R, max_k), descending
    kth = top_vals.gather(1, _to_device([max(k, 1) - 1 for k in ks], torch.int64, x.device).unsqueeze(1))
    off = _to_device([k == 0 for k in ks], torch.bool, x.device).unsqueeze(1)  # (R, 1)
    kth = kth.masked_fill(off, _NEG_INF)  # x < -inf never holds: disabled rows are left bit-identical
    return x.masked_fill(x < kth, _NEG_INF)


def _sorted_probs(probs: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Each row's probabilities in descending order, at least far enough to reach its top_p. (R, V) -> (R, K).

    A full sort of a 50k-262k vocabulary costs more on CPU than a decode step, while the nucleus nearly always
    lies within the few hundred most likely tokens; so on CPU we try top-k candidates first and sort only when
    some row needs more (the check reads a value back: free on CPU, a device sync on CUDA, where sorting is fast).
    """
    vocab = probs.shape[1]
    if probs.device.type == "cpu":
        for k in TOP_P_CANDIDATES:
            if k >= vocab:
                break
            top = probs.topk(k, dim=-1).values  # (R, k), descending
            if bool(((top.cumsum(dim=-1)[:, -1:] >= p) | (p >= 1.0)).all()):
                return top
    return probs.sort(dim=-1, descending=True).values


def apply_top_p(x: torch.Tensor, top_p: list[float]) -> torch.Tensor:
    """Keep each row's smallest set of most likely tokens whose probability reaches p; p == 1 = off.

    Tokens tied in probability with the last one kept are kept too, so the result depends on the values only,
    never on how a sort orders ties (the same rule as ``apply_top_k``).
    """
    if all(p >= 1.0 for p in top_p):
        return x
    p = _row_values(top_p, x.device)  # (R, 1)
    probs = x.softmax(dim=-1)  # (R, V)
    sorted_probs = _sorted_probs(probs, p)  # (R, K), descending
    # Tokens to keep: those whose preceding mass is below p (the first one always). Clamped because rounding
    # may leave the total just below a p close to 1.
    n_keep = ((sorted_probs.cumsum(dim=-1) < p).sum(dim=-1, keepdim=True) + 1).clamp_max_(sorted_probs.shape[1])
    threshold = sorted_probs.gather(1, n_keep - 1)  # (R, 1): the smallest probability kept
    # Rows with p == 1 are excluded explicitly, so they stay bit-identical whatever else is in the batch.
    return x.masked_fill((probs < threshold) & (p < 1.0), _NEG_INF)


def apply_min_p(x: torch.Tensor, min_p: list[float]) -> torch.Tensor:
    """Mask tokens whose probability is below min_p times the row's top probability; min_p 0 = off."""
    if not any(min_p):
        return x
    probs = x.softmax(dim=-1)  # (R, V)
    threshold = probs.amax(dim=-1, keepdim=True) * _row_values(min_p, x.device)  # (R, 1)
    return x.masked_fill(probs < threshold, _NEG_INF)


def target_probs(x: torch.Tensor, rows: Sequence[SamplingState]) -> torch.Tensor:
    """The distribution a random row draws from: temperature, top-k, top-p, min-p, softmax. x (R, V) -> (R, V)."""
    params = [s.params for s in rows]
    if any(p.temperature != 1.0 for p in params):
        x = x / _row_values([p.temperature for p in params], x.device)
    x = apply_top_k(x, [p.top_k for p in params])
    x = apply_top_p(x, [p.top_p for p in params])
    x = apply_min_p(x, [p.min_p for p in params])
    return x.softmax(dim=-1)


def _sample_random(
    x: torch.Tensor, rows: Sequence[SamplingState], native_draw: Callable[..., torch.Tensor] | None = None
) -> torch.Tensor:
    """`target_probs`, then one draw per row from its own generator. x (R, V) -> (R,). Rows without top-k go
    through `native_draw` (CPU float32 logits), which filters and draws the same way from the same numbers."""
    usable = native_draw is not None and x.device.type == "cpu" and x.dtype == torch.float32
    return _split_rows(
        x,
        rows,
        [usable and _drawn_natively(s.params, x.shape[1]) for s in rows],
        lambda xs, rs: _native_draw(native_draw, xs, rs),  # type: ignore[arg-type]
        lambda xs, rs: draw(target_probs(xs, rs), rs),
    )


def _split_rows(
    x: torch.Tensor,
    rows: Sequence[SamplingState],
    which: list[bool],
    when_true: Callable[[torch.Tensor, Sequence[SamplingState]], torch.Tensor],
    when_false: Callable[[torch.Tensor, Sequence[SamplingState]], torch.Tensor],
) -> torch.Tensor:
    """One token per row, (R,) int64 in row order: the rows where `which` holds from `when_true`, the others from
    `when_false` (each given its rows of x and their states; a row's token depends on that row alone)."""
    if all(which):
        return when_true(x, rows)
    if not any(which):
        return when_false(x, rows)
    tokens = torch.empty(len(rows), dtype=torch.int64, device=x.device)
    for pick, choose in ((True, when_true), (False, when_false)):
        idx = _row_indices([w == pick for w in which], x.device)
        tokens.index_copy_(0, idx, choose(x.index_select(0, idx), [r for r, w in zip(rows, which) if w == pick]))
    return tokens


def _drawn_natively(params: SamplingParams, vocab: int) -> bool:
    """A row the native draw takes: no top-k (temperature, top-p and min-p it applies itself)."""
    return params.top_k <= 0 or params.top_k >= vocab


def _native_draw(
    native_draw: Callable[..., torch.Tensor], x: torch.Tensor, rows: Sequence[SamplingState]
) -> torch.Tensor:
    """`native_draw` over rows without top-k: their temperatures, their top-p and min-p where any row has them."""
    params = [s.params for s in rows]
    temps = torch.tensor([p.temperature for p in params], dtype=torch.float32)
    top_p = torch.tensor([p.top_p for p in params], dtype=torch.float32) if any(p.top_p < 1.0 for p in params) else None
    min_p = torch.tensor([p.min_p for p in params], dtype=torch.float32) if any(p.min_p > 0.0 for p in params) else None
    return native_draw(x, temps, _uniforms(rows, x.device), top_p, min_p)


def _uniforms(rows: Sequence[SamplingState], device: torch.device) -> torch.Tensor:
    """(R, 2) float32: each row's next two uniform numbers in [0, 1), from its own generator."""
    u = torch.empty(len(rows), 2, dtype=torch.float32, device=device)
    for i, state in enumerate(rows):
        u[i].uniform_(generator=state.generator)
    return u


def draw(probs: torch.Tensor, rows: Sequence[SamplingState]) -> torch.Tensor:
    """Inverse-CDF sampling, two uniform numbers per row from that row's generator. (R, V) -> (R,) int64.

    The draw depends only on the row's probabilities and its generator, so it is batch-invariant, and two numbers
    per row (not one per token, as in the exponential race) make it several times cheaper on CPU. It runs in two
    levels, a block of 256 tokens and then a token in it, because a float32 CDF over the whole vocabulary would
    resolve probabilities only to about 6e-8 (its ulp near 1); within a block, they are resolved relative to the
    block's mass. (A float64 CDF would do too, but float64 cumsum is about 8x slower on CPU.)
    """
    n_rows, vocab = probs.shape
    u = _uniforms(rows, probs.device)  # (R, 2)
    if vocab % _DRAW_BLOCK:  # zero-probability padding (vocabularies are usually multiples of 256 already)
        probs = F.pad(probs, (0, -vocab % _DRAW_BLOCK))
    blocks = probs.view(n_rows, -1, _DRAW_BLOCK)  # (R, nb, 256)
    block = _inverse_cdf(blocks.sum(dim=-1).cumsum(dim=-1), u[:, :1])  # (R, 1)
    inner = blocks.gather(1, block.unsqueeze(-1).expand(-1, -1, _DRAW_BLOCK)).squeeze(1)  # (R, 256)
    token = _inverse_cdf(inner.cumsum(dim=-1), u[:, 1:])  # (R, 1)
    return (block * _DRAW_BLOCK + token).squeeze(1)


def _inverse_cdf(cdf: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index i with probability (cdf[i] - cdf[i-1]) / cdf[-1], for u uniform in [0, 1). (R, N), (R, 1) -> (R, 1).

    1 - u is in (0, 1], so the target is in (0, total]: the first entry >= target always exists and belongs to
    an entry of non-zero mass (a zero-mass entry repeats its predecessor's cdf value, which would be found first).
    """
    return torch.searchsorted(cdf, (1.0 - u) * cdf[:, -1:])


def _choose_tokens(
    x: torch.Tensor,
    rows: Sequence[SamplingState],
    argmax: Callable[[torch.Tensor], torch.Tensor],
    native_draw: Callable[..., torch.Tensor] | None = None,
) -> torch.Tensor:
    """Greedy rows take the argmax (ties -> lowest id); the others are sampled. x (B, V) -> (B,) int64."""
    return _split_rows(
        x,
        rows,
        [s.params.greedy for s in rows],
        lambda xs, _: argmax(xs),
        lambda xs, rs: _sample_random(xs, rs, native_draw),
    )


def log_softmax_if_needed(logits: torch.Tensor, rows: Sequence[SamplingState]) -> torch.Tensor | None:
    """The model's raw log-probabilities (B, V), before any processing, if any row asked for logprobs."""
    if all(s.params.logprobs is None for s in rows):
        return None
    return torch.log_softmax(logits.to(torch.float32), dim=-1)


def gather_output(tokens: torch.Tensor, logprobs: torch.Tensor | None, rows: Sequence[SamplingState]) -> SamplerOutput:
    """Bring tokens (B,) and the requested logprobs to the host in one transfer."""
    batch = tokens.shape[0]
    if logprobs is None:
        return SamplerOutput(token_ids=tokens.tolist())
    n_top = max(s.params.logprobs or 0 for s in rows)
    chosen = logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1)  # (B,)
    parts = [tokens.to(torch.float64), chosen.to(torch.float64)]
    if n_top > 0:
        top_vals, top_ids = logprobs.topk(n_top, dim=-1)  # (B, n_top) each, descending
        parts += [top_ids.flatten().to(torch.float64), top_vals.flatten().to(torch.float64)]
    # One float64 tensor, one .tolist(), one sync: token ids < 2**53 survive the round trip exactly.
    flat = torch.cat(parts).tolist()
    token_ids = [int(t) for t in flat[:batch]]
    chosen_lp = flat[batch : 2 * batch]
    ids_flat = flat[2 * batch : 2 * batch + batch * n_top]
    vals_flat = flat[2 * batch + batch * n_top :]
    out_lp: list[float | None] = []
    out_top: list[list[tuple[int, float]]] = []
    for i, state in enumerate(rows):
        want = state.params.logprobs
        out_lp.append(None if want is None else chosen_lp[i])
        start = i * n_top
        out_top.append([(int(ids_flat[start + j]), vals_flat[start + j]) for j in range(want or 0)])
    return SamplerOutput(token_ids=token_ids, logprobs=out_lp, top_logprobs=out_top)
