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
        for j in range(len(draft) + 1):
            x = self.sampler.apply_logits_processors(logits[j : j + 1], [state])  # (1, V)
            proposal = draft[j] if j < len(draft) else None
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
        probs = target_probs(x, [state])  # (1, V)
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
