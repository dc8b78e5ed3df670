"""Rejection sampling of speculative proposals: keep the target model's distribution exactly.

A sequence with proposals d_1..d_k has logits at k + 1 positions (after its last token and after each proposal).
Position j is processed exactly as a plain decode step would be, with the sampler's state advanced by the tokens
accepted before it (logit bias, penalties, min_tokens and the grammar mask see the same history), giving the
target distribution p_j. The proposal is a point mass q = delta(d_j) (proposers are deterministic), so the
standard scheme -- accept with probability min(1, p(d)/q(d)), otherwise sample from norm(max(0, p - q)) -- is:
accept d_j with probability p_j(d_j), otherwise sample from p_j with d_j removed. After k acceptances, one more
token is drawn from p_{k+1}. Every token then has exactly the probability p gives it. At temperature 0 the rule
is "accept while the proposal equals the argmax", the argmax taken as the plain sampler takes it, so the output
equals plain decoding token for token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .sampler import Sampler, SamplerOutput, SamplingState, draw, gather_output, log_softmax_if_needed, target_probs


@dataclass
class Verdict:
    """The tokens a verification step produced: `accepted` proposals, then the target's own token (none when a
    grammar completed on an accepted proposal); `output` holds them with their logprobs, as a `SamplerOutput`."""

    output: SamplerOutput
    accepted: int


def _history_free(state: SamplingState) -> bool:
    """Whether the state's processing of a row does not depend on the tokens produced before it."""
    p = state.params
    return (
        state.guide is None
        and p.repetition_penalty == 1.0
        and p.presence_penalty == 0.0
        and p.frequency_penalty == 0.0
        and (p.min_tokens == 0 or len(state.output_token_ids) >= p.min_tokens)
    )


class RejectionSampler:
    def __init__(self, sampler: Sampler) -> None:
        self.sampler = sampler

    def verify(self, logits: torch.Tensor, draft: list[int], state: SamplingState) -> Verdict:
        """logits: (len(draft) + 1, V), the target's at the last token and at each proposal; `state` is the
        sequence's sampler state (each produced token is appended to it)."""
        if logits.dim() != 2 or logits.shape[0] != len(draft) + 1:
            raise ValueError(
                f"expected ({len(draft) + 1}, V) logits for {len(draft)} proposals, got {tuple(logits.shape)}"
            )
        tokens: list[int] = []
        accepted = 0
        n = len(draft) + 1
        # Without processors that depend on the tokens produced (penalties, min_tokens, a grammar), every row is
        # processed alike: one pass over all rows (each row's values as a pass of its own would give them)
        together = _history_free(state)
        x_all: torch.Tensor | None = None  # (n, V) the processed rows, when processed together
        probs: torch.Tensor | None = None  # (n, V) their target distributions (sampled rows)
        if together:
            x_all = self.sampler.apply_logits_processors(logits, [state] * n)
            probs = None if state.params.greedy else target_probs(x_all, [state] * n)
        for j in range(n):
            proposal = draft[j] if j < len(draft) else None
            if together and probs is None:
                # one row per call: a multi-row argmax forks threads, which waited ~20 ms on busy cores
                token = int(self.sampler.argmax(x_all[j : j + 1])[0])
                ok = token == proposal
            elif together:
                token, ok = self._decide_random(probs[j : j + 1], state, proposal)
            else:
                x = self.sampler.apply_logits_processors(logits[j : j + 1], [state])  # (1, V)
                token, ok = self._decide(x, state, proposal)
            state.append(token)
            tokens.append(token)
            if not ok:
                break
            accepted += 1
            guide = state.guide
            if guide is not None and (guide.done or guide.failed):  # nothing may follow a finished document
                break
        rows = [state] * len(tokens)
        ids = torch.tensor(tokens, dtype=torch.int64, device=logits.device)
        logprobs = log_softmax_if_needed(logits[: len(tokens)], rows)
        return Verdict(gather_output(ids, logprobs, rows), accepted)

    def _decide(self, x: torch.Tensor, state: SamplingState, proposal: int | None) -> tuple[int, bool]:
        """The token of one position, and whether it is the accepted proposal."""
        if state.params.greedy:
            token = int(self.sampler.argmax(x)[0])
            return token, token == proposal
        return self._decide_random(target_probs(x, [state]), state, proposal)

    @staticmethod
    def _decide_random(probs: torch.Tensor, state: SamplingState, proposal: int | None) -> tuple[int, bool]:
        """probs: (1, V), the target distribution of the position."""
        if proposal is None:
            return int(draw(probs, [state])[0]), False
        u = torch.rand(1, generator=state.generator, device=probs.device)
        if bool(u[0] < probs[0, proposal]):
            return proposal, True
        residual = probs.clone()
        residual[0, proposal] = 0.0  # norm(max(0, p - delta(d))): the draw normalizes by the row's total
        if not bool(residual.sum() > 0):  # p(d) rounded to 1: nothing else can be drawn
            return proposal, True
        return int(draw(residual, [state])[0]), False
