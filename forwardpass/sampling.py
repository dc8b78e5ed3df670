"""Sampling parameters of one request: a validated, vLLM-shaped dataclass.

The torch side (the batched sampler) lives in ``forwardpass.sampler``; stop strings in ``forwardpass.stop``.
These limits are the Python API's; the HTTP server may apply stricter ones of its own (OpenAI's 0..2 range for
temperature, 4 stop strings, ...), and it checks ids against the model's vocabulary with ``verify_vocab``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .structured.params import StructuredOutputsParams

MAX_N = 128
MAX_TEMPERATURE = 100.0
MAX_LOGPROBS = 20
MAX_STOP_STRINGS = 16
LOGIT_BIAS_LIMIT = 100.0
# Temperatures below this are treated as greedy (as vLLM does): dividing logits by ~0 would overflow.
GREEDY_TEMPERATURE = 1e-5


def _check_int(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    """Return ``value`` as an int in ``[lo, hi]``; bools, floats and strings are rejected."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    value = int(value)
    if value < lo or (hi is not None and value > hi):
        bounds = f">= {lo}" if hi is None else f"between {lo} and {hi}"
        raise ValueError(f"{name} must be {bounds}, got {value}")
    return value


def _check_float(name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False) -> float:
    """Return ``value`` as a finite float in ``[lo, hi]`` (``(lo, hi]`` when ``lo_open``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    low_ok = value > lo if lo_open else value >= lo
    if not (math.isfinite(value) and low_ok and value <= hi):
        low = f"> {lo:g}" if lo_open else f">= {lo:g}"
        raise ValueError(f"{name} must be {low} and <= {hi:g} and finite, got {value!r}")
    return value


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be a bool, got {value!r}")
    return value


def _normalize_stop(stop: Any) -> tuple[str, ...]:
    if stop is None:
        return ()
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, Sequence):
        raise ValueError(f"stop must be a string or a list of strings, got {stop!r}")
    if len(items) > MAX_STOP_STRINGS:
        raise ValueError(f"stop must hold at most {MAX_STOP_STRINGS} strings, got {len(items)}")
    for item in items:
        if not isinstance(item, str) or not item:
            raise ValueError(f"stop must hold non-empty strings, got {item!r}")
    return tuple(items)


def _normalize_token_ids(name: str, ids: Any) -> tuple[int, ...]:
    if ids is None:
        return ()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise ValueError(f"{name} must be a list of token ids, got {ids!r}")
    return tuple(_check_int(name, i, 0) for i in ids)


def _normalize_logit_bias(bias: Any) -> dict[int, float] | None:
    if bias is None:
        return None
    if not isinstance(bias, Mapping):
        raise ValueError(f"logit_bias must be a dict of token id -> bias, got {bias!r}")
    out: dict[int, float] = {}
    for key, value in bias.items():
        token = _check_int("logit_bias", key, 0)
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"logit_bias values must be finite numbers, got {value!r} for token {token}")
        # OpenAI documents the range -100..100; clamping (not rejecting) matches what it accepts in practice.
        out[token] = min(max(float(value), -LOGIT_BIAS_LIMIT), LOGIT_BIAS_LIMIT)
    return out


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens for one request (field names and meanings follow vLLM's ``SamplingParams``).

    Construction validates every field and raises ``ValueError`` naming the field and the value. After
    construction ``stop`` and ``stop_token_ids`` are always tuples and ``logit_bias`` is a clamped copy.

    - ``temperature`` 0 (below 1e-5) or ``top_k == 1`` means greedy; ``top_k`` 0 or -1 disables top-k.
    - ``repetition_penalty`` (vLLM/CTRL semantics) covers prompt and output tokens; ``presence_penalty`` and
      ``frequency_penalty`` (OpenAI semantics) cover output tokens only.
    - ``max_tokens=None`` generates until the context is full. ``min_tokens`` masks EOS and ``stop_token_ids``
      until that many tokens have been generated.
    - ``logprobs``: None = no logprobs; 0 = the chosen token's only; k = also the top k (at most 20). They are
      the model's raw log-probabilities, before any penalty or temperature (vLLM's default).
    - ``structured_outputs``: a ``StructuredOutputsParams`` (JSON schema, JSON object, regex, choice or grammar)
      the output must match; its tokens are masked before every sampler, and the output ends when the
      grammar is complete.
    - ``seed`` makes one request reproducible whatever else is in the batch. With ``n > 1`` sample i uses
      ``seed + i``. ``n > 1`` at temperature 0 is allowed here (all samples equal); servers may refuse it.
    """

    n: int = 1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    min_p: float = 0.0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[int, float] | None = None
    seed: int | None = None
    stop: str | Sequence[str] | None = None
    stop_token_ids: Sequence[int] | None = None
    include_stop_str_in_output: bool = False
    max_tokens: int | None = 256
    min_tokens: int = 0
    ignore_eos: bool = False
    logprobs: int | None = None
    skip_special_tokens: bool = True
    structured_outputs: StructuredOutputsParams | None = None

    def __post_init__(self) -> None:
        # frozen=True: normalized values are written back with object.__setattr__.
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        put("n", _check_int("n", self.n, 1, MAX_N))
        put("temperature", _check_float("temperature", self.temperature, 0.0, MAX_TEMPERATURE))
        top_k = _check_int("top_k", self.top_k, -1)
        put("top_k", 0 if top_k == -1 else top_k)
        put("top_p", _check_float("top_p", self.top_p, 0.0, 1.0, lo_open=True))
        put("min_p", _check_float("min_p", self.min_p, 0.0, 1.0))
        put(
            "repetition_penalty",
            _check_float("repetition_penalty", self.repetition_penalty, 0.0, math.inf, lo_open=True),
        )
        put("presence_penalty", _check_float("presence_penalty", self.presence_penalty, -2.0, 2.0))
        put("frequency_penalty", _check_float("frequency_penalty", self.frequency_penalty, -2.0, 2.0))
        put("logit_bias", _normalize_logit_bias(self.logit_bias))
        if self.seed is not None:
            # torch.Generator.manual_seed accepts this range.
            put("seed", _check_int("seed", self.seed, -(2**63), 2**64 - 1))
        put("stop", _normalize_stop(self.stop))
        put("stop_token_ids", _normalize_token_ids("stop_token_ids", self.stop_token_ids))
        for name in ("include_stop_str_in_output", "ignore_eos", "skip_special_tokens"):
            _check_bool(name, getattr(self, name))
        if self.max_tokens is not None:
            put("max_tokens", _check_int("max_tokens", self.max_tokens, 1))
        put("min_tokens", _check_int("min_tokens", self.min_tokens, 0))
        if self.max_tokens is not None and self.min_tokens > self.max_tokens:
            raise ValueError(f"min_tokens must be <= max_tokens ({self.max_tokens}), got {self.min_tokens}")
        if self.logprobs is not None:
            put("logprobs", _check_int("logprobs", self.logprobs, 0, MAX_LOGPROBS))
        if self.structured_outputs is not None and not isinstance(self.structured_outputs, StructuredOutputsParams):
            raise ValueError(f"structured_outputs must be a StructuredOutputsParams, got {self.structured_outputs!r}")

    @property
    def greedy(self) -> bool:
        """True when sampling reduces to argmax (temperature ~0 or top_k == 1)."""
        return self.temperature < GREEDY_TEMPERATURE or self.top_k == 1

    def verify_vocab(self, vocab_size: int) -> None:
        """Raise ``ValueError`` if ``logit_bias`` or ``stop_token_ids`` name a token outside the vocabulary."""
        for name, ids in (("logit_bias", self.logit_bias or ()), ("stop_token_ids", self.stop_token_ids)):
            bad = [i for i in ids if i >= vocab_size]
            if bad:
                raise ValueError(f"{name} has token id {bad[0]}, out of vocabulary (vocab size {vocab_size})")
