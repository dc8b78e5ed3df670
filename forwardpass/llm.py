"""`LLM`: the Python API. Load a GGUF model once, then score, generate, stream and chat."""
from __future__ import annotations

import logging
import os
import time

import psutil
import torch

from .engine.model_runner import ModelRunner, SeqChunk
from .errors import ContextLengthError
from .gguf.reader import GGUFFile
from .models.base import DecoderLM, LoadOptions
from .models.registry import load_model
from .registry import resolve_model

logger = logging.getLogger(__name__)

BLOCK_SIZE = 16
DEFAULT_MAX_CTX = 8192


def default_threads() -> int:
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


class LLM:
    """A loaded model, ready to run.

    `model` is a path to a `.gguf` file or a short name (`forwardpass list` shows the cached ones).
    `reference=True` computes every matmul in float32 on dequantized weights: slow and exact.
    """

    def __init__(self, model: str | None = None, *, reference: bool = False, threads: int | None = None,
                 device: str = "cpu", ctx: int | None = None) -> None:
        t0 = time.perf_counter()
        if threads is not None and threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads or default_threads())
        self.device = device
        self.reference = reference
        self.path = resolve_model(model)
        self.gguf = GGUFFile(self.path)
        self.metadata = self.gguf.metadata
        options = LoadOptions(mode="reference" if reference else "dequant", device=device)
        self.model: DecoderLM = load_model(self.gguf, options)
        self.config = self.model.config
        self.ctx = self._context_size(ctx)
        kv_dtype = torch.float32 if reference else torch.bfloat16
        num_blocks = -(-self.ctx // BLOCK_SIZE)
        self.runner = ModelRunner(self.model, num_blocks, BLOCK_SIZE, kv_dtype, device)
        self.load_s = time.perf_counter() - t0
        logger.info("loaded %s (%s) in %.2f s", self.path, self.config.arch, self.load_s)

    def _context_size(self, ctx: int | None) -> int:
        limit = self.config.context_length
        if ctx is None:
            return min(limit, DEFAULT_MAX_CTX)
        if not isinstance(ctx, int) or isinstance(ctx, bool) or not 1 <= ctx <= limit:
            raise ValueError(f"ctx must be an integer in 1..{limit} (the model's context length), got {ctx!r}")
        return ctx

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def check_token_ids(self, token_ids: list[int], field: str = "token_ids") -> None:
        if not token_ids:
            raise ValueError(f"{field} must not be empty")
        for t in token_ids:
            if isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < self.vocab_size:
                raise ValueError(f"{field}: token id {t!r} is out of vocabulary (0..{self.vocab_size - 1})")

    def logits(self, token_ids: list[int]) -> torch.Tensor:
        """Teacher-forced next-token logits at every position, from an empty cache: (len, vocab) float32."""
        token_ids = list(token_ids)
        self.check_token_ids(token_ids)
        if len(token_ids) > self.ctx:
            raise ContextLengthError(
                f"{len(token_ids)} tokens do not fit in the context of {self.ctx} tokens",
                n_prompt_tokens=len(token_ids), n_ctx=self.ctx)
        blocks = list(range(-(-len(token_ids) // BLOCK_SIZE)))
        logits = self.runner.run([SeqChunk(token_ids, 0, blocks, all_logits=True)])
        return logits.cpu()
