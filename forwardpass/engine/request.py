"""Request: one prompt's journey through the engine, and how each of its samples turns tokens into text."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from ..outputs import CompletionOutput, RequestOutput, TokenLogprob
from ..sampler import SamplingState
from ..sampling import SamplingParams
from ..stop import StopStringMatcher
from ..tokenizer import StreamingDetokenizer, Tokenizer
from .sequence import Sequence


class Completion:
    """One sample of a request: its sequence, sampler state, and the text built from its tokens."""

    def __init__(
        self, index: int, seq: Sequence, params: SamplingParams, tokenizer: Tokenizer, request: "Request"
    ) -> None:
        self.seq = seq
        self.request = request
        self.params = params
        self.eog_ids = frozenset() if params.ignore_eos else tokenizer.eog_ids
        self.state = SamplingState(
            params, seq.token_ids[: seq.num_prompt_tokens], eos_token_ids=sorted(tokenizer.eog_ids), sample_index=index
        )
        self.detok = StreamingDetokenizer(tokenizer, skip_special=params.skip_special_tokens)
        self.stops = StopStringMatcher(params.stop, params.include_stop_str_in_output)
        self.output = CompletionOutput(index=index, logprobs=[] if params.logprobs is not None else None)

    def add_token(
        self, token: int, logprob: float | None, top: list[tuple[int, float]] | None, guide_at_token: bool = True
    ) -> None:
        """Record a sampled token; decide whether the sample is finished and why. `guide_at_token=False`: the
        grammar state has already consumed later tokens (a verified run of speculative proposals, which stops at
        the token that completes the grammar), so it says nothing about this one."""
        out = self.output
        out.token_ids.append(token)
        if out.logprobs is not None and logprob is not None:
            out.logprobs.append(TokenLogprob(token, logprob, top or []))
        if token in self.params.stop_token_ids:
            return self._finish("stop", token)
        if token in self.eog_ids:
            return self._finish("stop", None)
        text, stopped = self.stops.feed(self.detok.add(token))
        out.text += text
        if stopped:
            return self._finish("stop", self.stops.matched)
        guide = self.state.guide
        if (
            guide is not None and guide_at_token and (guide.done or guide.failed)
        ):  # the document is complete: nothing may follow
            return self._finish("stop", None)
        seq = self.seq
        if (
            self.params.max_tokens is not None and seq.num_output_tokens >= self.params.max_tokens
        ) or seq.num_tokens >= seq.max_tokens:
            self._finish("length", None)

    def _finish(self, reason: str, stop_reason: str | int | None) -> None:
        out = self.output
        if reason != "stop" or not isinstance(stop_reason, str):
            tail, stopped = self.stops.feed(self.detok.flush())
            out.text += tail if stopped else tail + self.stops.flush()
        out.finish_reason, out.stop_reason = reason, stop_reason

    def abort(self) -> None:
        if self.output.finish_reason is None:
            self.output.finish_reason = "abort"


@dataclass
class Request:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    completions: list[Completion] = field(default_factory=list)
    prompt: str | None = None
    arrival: float = field(default_factory=time.perf_counter)
    first_token_time: float | None = None
    finish_time: float | None = None

    @property
    def finished(self) -> bool:
        return all(c.output.finished for c in self.completions)

    def snapshot(self) -> RequestOutput:
        """The request's outputs so far (cumulative text; copies, safe to hand to another thread)."""
        outs = [
            CompletionOutput(
                c.output.index,
                c.output.text,
                list(c.output.token_ids),
                c.output.finish_reason,
                list(c.output.logprobs) if c.output.logprobs is not None else None,
                c.output.stop_reason,
            )
            for c in self.completions
        ]
        cached = self.completions[0].seq.num_cached if self.completions else 0
        return RequestOutput(self.request_id, self.prompt_token_ids, outs, self.prompt, cached)
