"""A draft model that proposes tokens for a larger target with the same vocabulary.

The draft keeps its own paged KV cache (its `ModelRunner`) and block manager: each target sequence has a mirror
sequence there holding the tokens whose draft K/V are computed. Every step the mirror is brought in step with the
target (rolled back to the longest common prefix, since the target may have rejected what the draft proposed),
the target's new tokens run through the draft in one pass whose last logits give the first proposal, and k - 1
single-token passes give the rest, greedily (argmax: a deterministic proposal, as `spec_decode` requires).
Proposals are batched over the sequences; a sequence whose mirror finds no room in the draft's cache gets none.
"""

from __future__ import annotations

from collections.abc import Callable
from collections.abc import Sequence as Seq

import torch

from .block_manager import BlockManager
from .model_runner import Logits, ModelRunner, SeqChunk
from .sequence import Sequence


def check_same_vocabulary(a: Seq[str], b: Seq[str], draft_name: str) -> None:
    """A draft must share the target's vocabulary: the same token texts (`tokenizer.ggml.tokens`) under the same
    ids. ValueError otherwise."""
    if not a or not b:
        raise ValueError(f"draft model {draft_name} or the target has no token list: cannot check the vocabulary")
    if len(a) != len(b):
        raise ValueError(
            f"draft model {draft_name} has {len(b)} tokens but the target has {len(a)}: speculative decoding "
            f"needs the same vocabulary"
        )
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            raise ValueError(
                f"draft model {draft_name}'s token {i} is {y!r} but the target's is {x!r}: speculative decoding "
                f"needs the same vocabulary"
            )


class DraftProposer:
    """`runner` and `blocks`: the draft model's runner and the block manager of its cache; `argmax` picks the
    greedy token of (R, V) float32 logits; `ctx`: the most tokens a mirror may hold; `vocab`: the target's
    vocabulary size (a draft id at or above it ends the proposal)."""

    def __init__(
        self,
        runner: ModelRunner,
        blocks: BlockManager,
        argmax: Callable[[torch.Tensor], torch.Tensor],
        ctx: int,
        vocab: int,
    ) -> None:
        self.runner, self.blocks, self.argmax = runner, blocks, argmax
        self.ctx, self.vocab = ctx, vocab
        self.mirrors: dict[int, Sequence] = {}  # target seq_id -> the draft's copy

    def propose(self, seqs: list[Sequence], ks: list[int]) -> list[list[int]]:
        drafts: list[list[int]] = [[] for _ in seqs]
        live = []  # (index, mirror, k) of the sequences the draft runs for
        chunks = []
        for i, (seq, k) in enumerate(zip(seqs, ks)):
            k = min(k, self.ctx - seq.num_tokens)  # the mirror computes up to num_tokens + k - 1 positions
            mirror = self._sync(seq)
            if k <= 0 or not self.blocks.ensure_slots(mirror, seq.num_tokens):
                self.release(seq)
                continue
            new = seq.token_ids[mirror.num_computed :]
            chunks.append(
                SeqChunk(new, mirror.num_computed, mirror.block_tables, Logits.LAST, prompt_len=seq.num_prompt_tokens)
            )
            mirror.token_ids = list(seq.token_ids)
            live.append((i, mirror, k))
        for _ in range(max((k for _, _, k in live), default=0)):
            if not chunks:
                break
            tokens = self.argmax(self.runner.run(chunks).float()).tolist()
            still, chunks = [], []
            for (i, mirror, k), token in zip(live, tokens):
                mirror.num_computed += len(mirror.token_ids) - mirror.num_computed  # the chunk just run
                self.blocks.on_computed(mirror)
                if token >= self.vocab:
                    continue
                drafts[i].append(token)
                mirror.token_ids.append(token)
                if len(drafts[i]) < k and self.blocks.ensure_slots(mirror, mirror.num_tokens):
                    still.append((i, mirror, k))
                    chunks.append(
                        SeqChunk([token], mirror.num_computed, mirror.block_tables, Logits.LAST, prompt_len=0)
                    )
            live = still
        return drafts

    def _sync(self, seq: Sequence) -> Sequence:
        """The mirror of `seq`, its computed tokens cut back to the longest prefix it shares with `seq` (less
        the last token, which the target has not computed either and the draft runs to propose from)."""
        mirror = self.mirrors.get(seq.seq_id)
        if mirror is None:
            mirror = self.mirrors[seq.seq_id] = Sequence([], 0, self.ctx)
        limit = min(mirror.num_computed, seq.num_tokens - 1)
        common = 0
        theirs, ours = seq.token_ids, mirror.token_ids
        while common < limit and theirs[common] == ours[common]:
            common += 1
        if common < mirror.num_computed:
            if self.blocks.sliding:  # released window blocks cannot come back: start over
                self.blocks.free_seq(mirror)
                common = 0
            mirror.num_computed = common
            self.blocks.rollback(mirror)
        mirror.token_ids = mirror.token_ids[:common]
        return mirror

    def release(self, seq: Sequence) -> None:
        mirror = self.mirrors.pop(seq.seq_id, None)
        if mirror is not None and mirror.block_tables:
            self.blocks.free_seq(mirror)
