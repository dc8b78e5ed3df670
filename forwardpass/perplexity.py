"""`forwardpass perplexity`: llama-perplexity's method, so the two numbers compare directly.

The text is tokenized once (BOS where the model uses one) and cut into chunks of `ctx` tokens; each chunk starts
with BOS in place of its first token (when the model uses BOS), runs from an empty cache, and only its second
half is scored: the logits at positions ctx/2 .. ctx-2 predict the tokens after them. The estimate is
exp(mean NLL) with the standard error of the mean carried through, as llama.cpp prints it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .llm import LLM


@dataclass
class PerplexityResult:
    ppl: float
    stderr: float
    chunks: int
    tokens_scored: int


def perplexity(
    llm: LLM, text: str, ctx: int = 512, on_chunk: Callable[[int, float], None] | None = None
) -> PerplexityResult:
    tokens = llm.tokenizer.encode(text, add_bos=True)
    if ctx < 4 or ctx > llm.ctx:
        raise ValueError(f"ctx must be in 4..{llm.ctx}, got {ctx}")
    n_chunks = len(tokens) // ctx
    if len(tokens) < 2 * ctx:
        raise ValueError(f"the text has {len(tokens)} tokens; at least {2 * ctx} are needed for a context of {ctx}")
    first = ctx // 2
    nll = nll2 = 0.0
    count = 0
    for i in range(n_chunks):
        chunk = tokens[i * ctx : (i + 1) * ctx]
        if llm.tokenizer.add_bos:
            chunk = [llm.tokenizer.bos_id] + chunk[1:]
        logits = llm.logits(chunk, first=first)[:-1].double()  # positions first .. ctx-2
        targets = torch.tensor(chunk[first + 1 :])
        token_nll = -torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)
        nll += token_nll.sum().item()
        nll2 += token_nll.pow(2).sum().item()
        count += token_nll.numel()
        if on_chunk is not None:
            on_chunk(i + 1, math.exp(nll / count))
    mean = nll / count
    var = nll2 / count - mean * mean
    ppl = math.exp(mean)
    stderr = math.sqrt(var / (count - 1)) * ppl if var > 0 and count > 1 else 0.0
    return PerplexityResult(ppl, stderr, n_chunks, count)
