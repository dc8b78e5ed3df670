"""ModelRunner: owns the model and its KV cache pool; turns a scheduled batch into tensors and runs it.

The scheduler (no torch) decides which tokens of which sequences run this step; the runner packs them into one
flat batch (ids, positions, cache slots, block tables), runs the forward pass, and returns the logits of the
positions that need sampling.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..models.attention import AttentionMetadata, KVCache
from ..models.base import DecoderLM


@dataclass
class SeqChunk:
    """`token_ids` of one sequence, starting at position `start`; its cache blocks are `block_table`."""

    token_ids: list[int]
    start: int
    block_table: list[int]
    logits: str = "last"  # which positions need logits: "last", "all" (teacher forcing) or "none"
    logits_from: int = 0  # with "all": skip the chunk's first positions


class ModelRunner:
    def __init__(self, model: DecoderLM, num_blocks: int, block_size: int, kv_dtype: torch.dtype,
                 device: str = "cpu") -> None:
        c = model.config
        self.model = model
        self.device = torch.device(device)
        self.block_size = block_size
        self.cache = KVCache(c.n_layers, num_blocks, block_size, c.n_kv_heads, c.head_dim, kv_dtype, device)

    @torch.inference_mode()
    def run(self, chunks: list[SeqChunk]) -> torch.Tensor:
        """Runs one step; returns float32 logits (rows: each chunk's positions that asked for them, in order)."""
        ids, positions, slots, rows = [], [], [], []
        for chunk in chunks:
            n = len(chunk.token_ids)
            ids.extend(chunk.token_ids)
            pos = range(chunk.start, chunk.start + n)
            positions.extend(pos)
            bs = self.block_size
            slots.extend(chunk.block_table[p // bs] * bs + p % bs for p in pos)
            first = len(ids) - n
            if chunk.logits == "all":
                rows.extend(range(first + chunk.logits_from, len(ids)))
            elif chunk.logits == "last":
                rows.append(len(ids) - 1)
        meta = AttentionMetadata.build(
            query_lens=[len(c.token_ids) for c in chunks], seq_lens=[c.start + len(c.token_ids) for c in chunks],
            block_tables=[c.block_table for c in chunks], slot_mapping=slots, block_size=self.block_size,
            device=self.device)
        dev = self.device
        hidden = self.model.forward(torch.tensor(ids, dtype=torch.int64, device=dev),
                                    torch.tensor(positions, dtype=torch.int64, device=dev), meta, self.cache)
        if not rows:
            return torch.empty(0, self.model.config.vocab_size, device=dev)
        if len(rows) != hidden.shape[0]:
            hidden = hidden.index_select(0, torch.tensor(rows, dtype=torch.int64, device=dev))
        return self.model.compute_logits(hidden)
