"""ModelRunner: owns the model and its KV cache pool; turns a scheduled batch into tensors and runs it.

The scheduler (no torch) decides which tokens of which sequences run this step; the runner packs them into flat
batches (ids, positions, cache slots, block tables), runs the forward pass, and returns the logits of the
positions that need sampling.

Deterministic batching: a token's result must not depend on what else is in the batch. The native CPU step
computes every token alone (its norm, int8 quantization, dot products in a fixed order, attention), so the
whole batch runs as one pass. Elsewhere (CUDA, no native kernels) every kernel computes a row the same way
whatever the other rows, but fast kernels differ between prompt processing (a GEMM) and decoding (a
bandwidth-bound kernel); choosing by batch size would make a token's math depend on its neighbours. So there
each step runs at most two passes, by role: prompt tokens (any chunk size) through the prefill kernels,
generated tokens (decoding, or recomputed after a preemption) one row each through the decode kernels.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace

import torch

from ..models.attention import AttentionMetadata, KVCache, KVGroup
from ..models.base import DecoderLM


class Logits(enum.Enum):
    """Which positions of a chunk need logits."""

    NONE = "none"  # only fill the cache (a prompt chunk before the last)
    LAST = "last"  # the last position (the next token is sampled from it)
    ALL = "all"  # every position from `logits_from` on (teacher-forced scoring)


class Pass(enum.Enum):
    """How one forward pass runs its rows: the kernels every `Linear` is asked for (its `prefill` argument)."""

    NATIVE = None  # the native CPU step: every token alone, whatever its role
    PROMPT = True  # prompt tokens: the prefill kernels
    GENERATED = False  # generated tokens: the decode kernels, one row each

    @property
    def prefill(self) -> bool | None:
        return self.value


@dataclass
class SeqChunk:
    """`token_ids` of one sequence, starting at position `start`; its cache blocks are `block_tables` (one table
    per KV group of the cache). Positions from `prompt_len` on are generated tokens (the decode kernels' rows);
    `prompt_len=None`: every token of the chunk is a prompt token."""

    token_ids: list[int]
    start: int
    block_tables: list[list[int]]
    logits: Logits = Logits.LAST
    logits_from: int = 0  # with Logits.ALL: skip the chunk's first positions
    prompt_len: int | None = None

    @property
    def num_prompt(self) -> int:
        """How many of the chunk's tokens are prompt tokens."""
        if self.prompt_len is None:
            return len(self.token_ids)
        return min(max(self.prompt_len - self.start, 0), len(self.token_ids))

    @property
    def num_logit_rows(self) -> int:
        if self.logits is Logits.ALL:
            return len(self.token_ids) - self.logits_from
        return 1 if self.logits is Logits.LAST else 0


class ModelRunner:
    """`kv_groups`: the cache layout (`engine/kv_groups.py` plans it), or a block count: one pool of that many
    blocks for every layer, keeping whole contexts."""

    def __init__(
        self,
        model: DecoderLM,
        kv_groups: int | list[KVGroup],
        block_size: int,
        kv_dtype: torch.dtype,
        device: str = "cpu",
    ) -> None:
        c = model.config
        self.model = model
        self.device = torch.device(device)
        self.block_size = block_size
        if isinstance(kv_groups, int):
            kv_groups = [KVGroup(0, tuple(range(c.n_layers)), kv_groups)]
        self.cache = KVCache(kv_groups, block_size, c.n_kv_heads, c.head_dim, kv_dtype, device)
        self.sliding = any(g.window for g in kv_groups)

    @torch.inference_mode()
    def run(self, chunks: list[SeqChunk]) -> torch.Tensor:
        """Runs one step; returns float32 logits (rows: each chunk's positions that asked for them, in order)."""
        if self._native():
            # the native step computes every token alone whatever its role: one pass for the whole batch
            return self._forward(chunks, Pass.NATIVE)
        prompt_parts: list[tuple[int, SeqChunk]] = []
        generated: list[tuple[int, SeqChunk]] = []
        for i, chunk in enumerate(chunks):
            split = chunk.num_prompt
            if split == len(chunk.token_ids):
                prompt_parts.append((i, chunk))
                continue
            if split > 0:
                keep = Logits.ALL if chunk.logits is Logits.ALL else Logits.NONE
                prompt_parts.append((i, replace(chunk, token_ids=chunk.token_ids[:split], logits=keep)))
            for j in range(split, len(chunk.token_ids)):  # each generated token is its own decode row
                last = j == len(chunk.token_ids) - 1
                wants = chunk.logits is Logits.ALL or (chunk.logits is Logits.LAST and last)
                generated.append(
                    (
                        i,
                        SeqChunk(
                            [chunk.token_ids[j]],
                            chunk.start + j,
                            chunk.block_tables,
                            Logits.LAST if wants else Logits.NONE,
                        ),
                    )
                )
        passes = [(parts, kind) for parts, kind in ((prompt_parts, Pass.PROMPT), (generated, Pass.GENERATED)) if parts]
        if len(passes) == 1 and all(a[0] < b[0] for a, b in zip(passes[0][0], passes[0][0][1:])):
            # one pass whose rows are already in chunk order (every decode step): its logits as they are
            return self._forward([c for _, c in passes[0][0]], passes[0][1])
        results: dict[int, list[torch.Tensor]] = {}
        for parts, kind in passes:
            logits = self._forward([c for _, c in parts], kind)
            row = 0
            for i, c in parts:
                n = c.num_logit_rows
                if n:
                    results.setdefault(i, []).append(logits[row : row + n])
                row += n
        pieces = [t for i in range(len(chunks)) for t in results.get(i, [])]
        if not pieces:
            return torch.empty(0, self.model.config.vocab_size, device=self.device)
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces)

    def copy_block(self, group: int, src: int, dst: int) -> None:
        """Copy one KV block in every layer of `group` (a fork's copy-on-write of a shared partial block)."""
        self.cache.copy_block(group, src, dst)

    def _native(self) -> bool:
        native = self.model.native_decoder
        return native is not None and native.accepts(self.cache)

    @torch.inference_mode()
    def hidden(self, chunks: list[SeqChunk]) -> list[torch.Tensor]:
        """Runs prompt chunks (embedding requests) and returns each one's final hidden states: (n_i, d_model)
        float32 after the output norm. A pass of its own, so the rows sampled from in the same step keep their
        usual kernels."""
        ids_t, positions_t, meta, _ = self._pack(chunks, Pass.NATIVE if self._native() else Pass.PROMPT)
        hidden = self.model.forward(ids_t, positions_t, meta, self.cache).float()  # (T, d_model)
        return list(hidden.split([len(c.token_ids) for c in chunks]))

    def _pack(
        self, chunks: list[SeqChunk], kind: Pass
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int]]:
        """The flat batch: token ids, positions, attention metadata and the rows that want logits."""
        ids, positions, rows = [], [], []
        slots: list[list[int]] = [[] for _ in self.cache.groups]  # (G, T)
        bs = self.block_size
        for chunk in chunks:
            n = len(chunk.token_ids)
            first = len(ids)
            ids.extend(chunk.token_ids)
            pos = range(chunk.start, chunk.start + n)
            positions.extend(pos)
            for group_slots, table in zip(slots, chunk.block_tables):
                group_slots.extend(table[p // bs] * bs + p % bs for p in pos)
            if chunk.logits is Logits.ALL:
                rows.extend(range(first + chunk.logits_from, len(ids)))
            elif chunk.logits is Logits.LAST:
                rows.append(len(ids) - 1)
        meta = AttentionMetadata.build(
            query_lens=[len(c.token_ids) for c in chunks],
            seq_lens=[c.start + len(c.token_ids) for c in chunks],
            block_tables=[c.block_tables for c in chunks],
            slot_mapping=slots,
            block_size=bs,
            device=self.device,
            prefill=kind.prefill,
            sliding=self.sliding,
        )
        dev = self.device
        ids_t = torch.tensor(ids, dtype=torch.int64, device=dev)
        positions_t = torch.tensor(positions, dtype=torch.int64, device=dev)
        return ids_t, positions_t, meta, rows

    def _forward(self, chunks: list[SeqChunk], kind: Pass) -> torch.Tensor:
        ids_t, positions_t, meta, rows = self._pack(chunks, kind)
        dev = self.device
        if not rows:
            self.model.forward(ids_t, positions_t, meta, self.cache)  # fills the cache
            return torch.empty(0, self.model.config.vocab_size, device=dev)
        # The head's GEMM only for teacher forcing (scoring many positions): a prompt's last position is one row,
        # and dequantizing a whole head for it (Gemma 3's has 262k rows) costs more than the prompt's layers.
        # Decode kernels compute each row alone, so a generated token's logits never depend on the batch.
        scoring = kind.prefill and any(c.logits is Logits.ALL for c in chunks)  # None in the native step
        return self.model.forward_logits(
            ids_t, positions_t, meta, self.cache, torch.tensor(rows, dtype=torch.int64, device=dev), scoring
        )
