"""LLMEngine: requests in, tokens out. One step = schedule -> run -> sample -> update."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import logging
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass
from typing import NamedTuple

import torch

from ..kernels.native import argmax_fn, mask_fn, sample_fn
from ..outputs import EmbeddingOutput, RequestOutput
from ..rejection import RejectionSampler, Verdict
from ..sampler import Sampler, SamplerOutput
from ..sampling import SamplingParams
from ..structured.compiler import CompiledGrammar
from ..structured.guide import Guide
from ..tokenizer import Tokenizer
from .block_manager import BlockManager
from .checks import RequestChecks
from .kv_groups import blocks_per_sequence
from .model_runner import Logits, ModelRunner, SeqChunk
from .pooling import EmbedRequest, Pooler
from .request import Completion, Request
from .scheduler import ScheduledSeq, Scheduler, SchedulerConfig, SchedulerOutput
from .sequence import Sequence, Status
from .spec_decode import SpecStats, Speculator

logger = logging.getLogger(__name__)


class SeqProgress(NamedTuple):
    """One sequence of the running batch, as the server's /slots shows it."""

    request_id: str
    num_prompt_tokens: int
    num_computed: int  # tokens in the KV cache: below num_prompt_tokens while the prompt is being prefilled
    num_output_tokens: int


@dataclass
class EngineStats:
    running: int
    waiting: int
    kv_blocks_used: int  # summed over the KV groups (a sliding-window group's blocks are smaller: fewer layers)
    kv_blocks_total: int
    prefix_cache_hit_rate: float  # prompt tokens found in the cache / prompt tokens admitted (same in every group)
    preemptions: int
    running_seqs: tuple[SeqProgress, ...] = ()  # the running batch, oldest first
    spec: SpecStats | None = None  # speculative decoding's totals (None without it)


class LLMEngine:
    def __init__(
        self,
        runner: ModelRunner,
        tokenizer: Tokenizer,
        ctx: int,
        scheduler_config: SchedulerConfig | None = None,
        enable_prefix_caching: bool = True,
        speculator: Speculator | None = None,
    ) -> None:
        self.runner = runner
        self.tokenizer = tokenizer
        self.ctx = ctx
        cache = runner.cache
        scheduler_config = scheduler_config or SchedulerConfig()
        self.block_manager = BlockManager(
            cache.num_blocks, cache.block_size, enable_prefix_caching, [g.window for g in cache.groups]
        )
        for group in cache.groups:
            need = blocks_per_sequence(group.window, ctx, cache.block_size, scheduler_config.max_num_batched_tokens)
            if need > group.num_blocks:
                what = (
                    f"one full context of {ctx} tokens"
                    if not group.window
                    else f"one sequence's {group.window}-token window and prefill chunk ({need} blocks)"
                )
                raise ValueError(
                    f"the KV cache ({group.num_blocks} blocks for layers {list(group.layers)}) cannot "
                    f"hold {what}; raise the KV memory or lower ctx"
                )
        self.scheduler = Scheduler(scheduler_config, self.block_manager)
        lib = runner.model.options.cpu_native
        self.sampler = Sampler(argmax_fn(lib), mask_fn(lib), sample_fn(lib))
        self.speculator = speculator  # speculative decoding: proposals verified in the step (None: off)
        self.rejection = RejectionSampler(self.sampler)
        self.requests: dict[str, Request | EmbedRequest] = {}
        self._ids = itertools.count()
        self.checks = RequestChecks(tokenizer, runner.model.config.vocab_size, ctx)
        self.grammars = self.checks.grammars
        # structured-output requests whose grammar is still compiling: not scheduled until it is ready
        self._compiling: dict[str, tuple[Request, Future[CompiledGrammar]]] = {}
        self._failed: list[Request] = []  # ended before running (grammar failed); reported by the next step

    # ---- requests ----
    def validate(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        """Raise `ContextLengthError` or `ValueError` if the request can never run. A structured-output
        constraint is compiled here, in the caller's thread (`StructuredOutputError` if it cannot be), so
        the engine loop later finds it in the compiler's cache."""
        self.checks.validate(prompt_token_ids, params)

    def _check(self, prompt_token_ids: list[int], params: SamplingParams) -> None:
        self.checks.check(prompt_token_ids, params)

    def add_request(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str | None = None,
        prompt: str | None = None,
    ) -> Request:
        """Queue a request. One with a structured-output constraint joins the scheduler once its grammar is
        compiled (at once when it is cached); a constraint that fails to compile raises here if already known."""
        self._check(prompt_token_ids, params)
        n_prompt = len(prompt_token_ids)
        request_id = request_id or f"req-{next(self._ids)}"
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        request = Request(request_id, list(prompt_token_ids), params, prompt=prompt)
        for index in range(params.n):
            seq = Sequence(list(prompt_token_ids), n_prompt, self.ctx)
            seq.owner = Completion(index, seq, params, self.tokenizer, request)
            request.completions.append(seq.owner)
        # n > 1: only the first sample computes the prompt; the others fork from it (sharing its blocks)
        request.completions[0].seq.forks = [c.seq for c in request.completions[1:]]
        if params.structured_outputs is not None:
            grammar = self.grammars.future(params.structured_outputs)
            if not grammar.done():
                self._compiling[request_id] = (request, grammar)
                self.requests[request_id] = request
                return request
            self._attach_guides(request, grammar.result())  # raises a compile error already known
        self._schedule(request)
        return request

    def _schedule(self, request: Request) -> None:
        self.scheduler.add(request.completions[0].seq)
        self.requests[request.request_id] = request

    @staticmethod
    def _attach_guides(request: Request, grammar: CompiledGrammar) -> None:
        """Every sample gets its own matcher, at the start of the grammar (it sees only generated tokens)."""
        for completion in request.completions:
            completion.state.guide = Guide(grammar.new_matcher())

    def _admit_compiled(self, wait_s: float = 0.0) -> None:
        """Schedule the requests whose grammar is ready; finish those whose grammar failed (as aborted)."""
        if wait_s > 0 and self._compiling:
            wait([f for _, f in self._compiling.values()], timeout=wait_s, return_when=FIRST_COMPLETED)
        for request_id, (request, grammar) in list(self._compiling.items()):
            if not grammar.done():
                continue
            del self._compiling[request_id]
            try:
                self._attach_guides(request, grammar.result())
            except (ValueError, RuntimeError) as e:
                logger.warning("%s: structured output grammar failed: %s", request_id, e)
                for completion in request.completions:
                    completion.abort()
                request.finish_time = time.perf_counter()
                self._failed.append(request)
                continue
            self._schedule(request)

    def validate_embed(self, prompt_token_ids: list[int]) -> None:
        """Raise `ContextLengthError` or `ValueError` if an embedding input can never run."""
        self.checks.validate_embed(prompt_token_ids)

    def add_embed_request(
        self, prompt_token_ids: list[int], pooling: str, request_id: str | None = None, normalize: bool = True
    ) -> EmbedRequest:
        """Queue a prompt whose final hidden states are pooled (`pooling`: mean, cls or last) into one vector."""
        self.validate_embed(prompt_token_ids)
        n_prompt = len(prompt_token_ids)
        request_id = request_id or f"emb-{next(self._ids)}"
        if request_id in self.requests:
            raise ValueError(f"request id {request_id!r} is already in use")
        request = EmbedRequest(request_id, list(prompt_token_ids), pooling, normalize)
        seq = Sequence(list(prompt_token_ids), n_prompt, self.ctx)
        seq.owner = Pooler(seq, request, pooling)
        seq.reuse_prefix = seq.owner.reuses_prefix
        request.completions.append(seq.owner)
        self.scheduler.add(seq)
        self.requests[request_id] = request
        return request

    def abort(self, request_id: str) -> None:
        """Cancel a request wherever it is; its blocks return to the pool at once."""
        request = self.requests.pop(request_id, None)
        self._compiling.pop(request_id, None)
        if request is None:
            return
        for completion in request.completions:
            completion.abort()
            if completion.seq.status is not Status.FINISHED:
                self._finish(completion.seq)

    def _finish(self, seq: Sequence) -> None:
        """A sample is done (or aborted): its blocks and its proposer's state go at once."""
        self.scheduler.finish(seq)
        if self.speculator is not None:
            self.speculator.release(seq)

    @contextlib.contextmanager
    def scratch_blocks(self, num_tokens: int, count: int = 1) -> Iterator[list[list[list[int]]]]:
        """Block tables (one per KV group) for `count` sequences of up to `num_tokens` tokens outside the scheduler
        (benchmarks, tests), keeping whole contexts in every group; the blocks return to the pool on exit."""
        seqs = [Sequence([], 0, self.ctx) for _ in range(count)]
        try:
            for seq in seqs:
                if not self.block_manager.ensure_slots(seq, num_tokens):
                    raise RuntimeError(f"the KV cache has no room for {count} x {num_tokens} tokens now")
            yield [seq.block_tables for seq in seqs]
        finally:
            for seq in seqs:
                if seq.block_tables:
                    self.block_manager.free_seq(seq)

    def score(self, token_ids: list[int], first: int = 0) -> torch.Tensor:
        """Teacher-forced logits of positions `first` .. len - 1 from an empty cache, outside the scheduler:
        (len - first, vocab) float32. One pass; with sliding-window groups, prefill chunks of
        `max_num_batched_tokens` whose out-of-window blocks are released in between, as for a request."""
        bm = self.block_manager
        step = self.scheduler.config.max_num_batched_tokens if bm.sliding else len(token_ids)
        seq = Sequence([], 0, self.ctx)
        parts = []
        try:
            for start in range(0, len(token_ids), step):
                end = min(start + step, len(token_ids))
                if not bm.ensure_slots(seq, end):
                    raise RuntimeError(f"the KV cache has no room for 1 x {len(token_ids)} tokens now")
                skip = max(0, first - start)
                mode = Logits.ALL if skip < end - start else Logits.NONE
                parts.append(self.runner.run([SeqChunk(token_ids[start:end], start, seq.block_tables, mode, skip)]))
                seq.num_computed = end
                bm.release_out_of_window(seq)
        finally:
            if seq.block_tables:
                bm.free_seq(seq)
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def has_unfinished(self) -> bool:
        return bool(self.requests)

    # ---- the loop ----
    def step(self) -> list[RequestOutput | EmbeddingOutput]:
        """Run one batch; return the outputs of every request that changed (finished ones for the last time)."""
        self._admit_compiled()
        done = self._failed_outputs()  # outputs that need no run
        if self.speculator is not None:
            self._propose()
        output = self.scheduler.schedule()
        if not output:
            if not done and self._compiling:  # nothing else to do: wait briefly for a grammar, not spin
                self._admit_compiled(wait_s=0.01)
            return done
        for group, src, dst in output.block_copies:
            self.runner.copy_block(group, src, dst)
        generating = SchedulerOutput([s for s in output.scheduled if not isinstance(s.seq.owner, Pooler)])
        pooled = [s for s in output.scheduled if isinstance(s.seq.owner, Pooler)]
        logits = self._run(generating)
        done += self._pool(pooled) if pooled else []
        update = self.scheduler.update(generating)
        for group, src, dst in update.block_copies:
            self.runner.copy_block(group, src, dst)
        completions, rows = [], []  # each sample and the row of the logits it draws from
        verified: list[tuple[ScheduledSeq, int]] = []  # sequences with proposals and their first logits row
        row = 0
        for s in generating.scheduled:
            if not s.samples:
                continue
            if s.draft:
                verified.append((s, row))
                row += len(s.draft) + 1
                continue
            for seq in [s.seq, *update.forked.get(s.seq.seq_id, ())]:  # forks draw from their parent's logits
                completions.append(seq.owner)
                rows.append(row)
            row += 1
        changed: dict[str, Request] = {}
        if completions:
            picked = (
                logits if rows == list(range(logits.shape[0])) else logits[torch.tensor(rows, device=logits.device)]
            )
            sampled = self.sampler.sample(picked, [c.state for c in completions])
            for i, completion in enumerate(completions):
                self._add_tokens(completion, sampled, [i], changed)
        for s, first in verified:
            self._accept(
                s, self.rejection.verify(logits[first : first + len(s.draft) + 1], s.draft, s.seq.owner.state), changed
            )
        return done + self._outputs(changed)

    def _propose(self) -> None:
        """Proposals for the decoding sequences, each capped so that its tokens stay within its limits."""
        running = self.scheduler.running
        limits = []
        for seq in running:
            params = getattr(seq.owner, "params", None)
            left = seq.max_tokens - seq.num_tokens
            if params is not None and params.max_tokens is not None:
                left = min(left, params.max_tokens - seq.num_output_tokens)
            limits.append(left - 1 if params is not None else 0)
        self.speculator.propose(running, limits)

    def _accept(self, s: ScheduledSeq, verdict: Verdict, changed: dict[str, Request]) -> None:
        """Record a verified sequence's tokens, then roll the rejected proposals out of its KV cache."""
        seq, completion = s.seq, s.seq.owner
        out = verdict.output
        self.speculator.record(seq, len(s.draft), verdict.accepted)
        self._add_tokens(completion, out, range(len(out.token_ids)), changed)
        if seq.status is Status.FINISHED:
            return  # its blocks are already free
        # the last token and the accepted proposals are in the cache; the token after them is not
        seq.num_computed += min(verdict.accepted, len(out.token_ids) - 1)
        self.block_manager.rollback(seq)
        self.block_manager.on_computed(seq)

    def _run(self, output: SchedulerOutput) -> torch.Tensor | None:
        """The logits of the scheduled sequences that sample this step, in order (None if nothing runs): one row
        each, or one per position of a sequence verifying proposals."""
        chunks = [
            SeqChunk(
                s.token_ids,
                s.start,
                s.seq.block_tables,
                Logits.ALL if s.draft else Logits.LAST if s.samples else Logits.NONE,
                logits_from=s.num_tokens - 1,
                prompt_len=s.seq.num_prompt_tokens,
            )
            for s in output.scheduled
        ]
        return self.runner.run(chunks) if chunks else None

    def _pool(self, pooled: list[ScheduledSeq]) -> list[EmbeddingOutput]:
        """Run the embedding requests' chunks; finish those whose whole prompt has now run."""
        chunks = [SeqChunk(s.token_ids, s.start, s.seq.block_tables, Logits.NONE) for s in pooled]
        outputs = []
        for s, hidden in zip(pooled, self.runner.hidden(chunks)):
            seq, pooler = s.seq, s.seq.owner
            pooler.add(hidden, seq.num_computed)
            seq.num_computed += s.num_tokens
            self.block_manager.on_computed(seq)
            if seq.num_computed == seq.num_tokens:
                request = pooler.request
                request.embedding = pooler.result(request.normalize)
                request.finish_time = time.perf_counter()
                pooler.finished = True
                self.scheduler.finish(seq)
                self.requests.pop(request.request_id, None)
                outputs.append(request.snapshot())
        return outputs

    def _failed_outputs(self) -> list[RequestOutput]:
        """Requests that ended before running (their grammar failed to compile): reported once, then dropped."""
        done, self._failed = self._failed, []
        for request in done:
            self.requests.pop(request.request_id, None)
        return [r.snapshot() for r in done]

    def _add_tokens(self, completion: Completion, sampled: SamplerOutput, indices, changed: dict[str, Request]) -> None:
        """Append the sampled tokens at `indices` to a completion, in order, until it finishes."""
        seq, request = completion.seq, completion.request
        for i in indices:
            token = sampled.token_ids[i]
            seq.token_ids.append(token)
            logprob = sampled.logprobs[i] if sampled.logprobs is not None else None
            top = sampled.top_logprobs[i] if sampled.top_logprobs is not None else None
            completion.add_token(token, logprob, top, guide_at_token=i == indices[-1])
            if request.first_token_time is None:
                request.first_token_time = time.perf_counter()
            changed[request.request_id] = request
            if completion.output.finished:
                self._finish(seq)
                break

    def _outputs(self, changed: dict[str, Request]) -> list[RequestOutput]:
        now = time.perf_counter()
        outputs = []
        for request in changed.values():
            if request.finished:
                request.finish_time = now
                self.requests.pop(request.request_id, None)
            outputs.append(request.snapshot())
        return outputs

    def stats(self) -> EngineStats:
        bm = self.block_manager
        return EngineStats(
            running=len(self.scheduler.running),
            waiting=len(self.scheduler.waiting) + len(self._compiling),
            kv_blocks_used=bm.num_used,
            kv_blocks_total=bm.num_blocks,
            prefix_cache_hit_rate=bm.prefix_hits / bm.prefix_queries if bm.prefix_queries else 0.0,
            preemptions=self.scheduler.num_preemptions,
            spec=dataclasses.replace(self.speculator.stats) if self.speculator is not None else None,
            running_seqs=tuple(
                SeqProgress(
                    s.owner.request.request_id if s.owner is not None else "",
                    s.num_prompt_tokens,
                    s.num_computed,
                    s.num_output_tokens,
                )
                for s in self.scheduler.running
            ),
        )


__all__ = ["LLMEngine", "EngineStats", "SeqProgress", "Status"]
