"""How close one set of logits is to the exact ones: the measures behind docs/benchmarks.md's fidelity tables, the
fidelity tests and scripts/fidelity.py and scripts/cuda_check.py (one definition, so their figures compare).

`compare_logits(exact, other)` computes, per position, KL(exact || other) over the softmax distributions in float64
and whether the two argmaxes agree. `decode_logits(llm, ids)` gives teacher-forced logits with every token after
the first through the generated-token (decode) kernels, to set next to `llm.logits(ids)` (the prompt kernels).
`BATCH_SYSTEM` and `BATCH_TOPICS` make the 16 prompts of the batch-invariance checks (tests/test_engine_real.py and
scripts/cuda_check.py): one shared system text, so a chunked run meets a cached prefix, and a topic each.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .llm import LLM

BATCH_TOPICS = (
    "the ocean",
    "a robot",
    "the moon",
    "coffee",
    "a library",
    "winter",
    "trains",
    "the desert",
    "music",
    "a city at night",
    "bees",
    "mathematics",
    "a lighthouse",
    "rain",
    "chess",
    "volcanoes",
)
BATCH_SYSTEM = (
    "You are a careful assistant. Answer in plain English, in two or three sentences, without lists. "
    "Prefer concrete facts to opinions, and say so when you are unsure. "
)


@dataclass(frozen=True)
class LogitAgreement:
    mean_kl: float  # mean over positions of KL(exact || other), in nats
    max_kl: float
    top1: float  # fraction of positions whose argmax agrees
    max_abs_logit_gap: float
    logit_range: float  # max |exact logit|, the scale max_abs_logit_gap is to be read against

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def compare_logits(exact: torch.Tensor, other: torch.Tensor) -> LogitAgreement:
    """`exact` and `other`: (positions, vocab) logits of the same token ids."""
    if exact.shape != other.shape:
        raise ValueError(f"logits of different shapes: {tuple(exact.shape)} and {tuple(other.shape)}")
    exact, other = exact.detach().cpu().double(), other.detach().cpu().double()
    p, q = torch.log_softmax(exact, -1), torch.log_softmax(other, -1)
    kl = (p.exp() * (p - q)).sum(-1)
    return LogitAgreement(
        mean_kl=float(kl.mean()),
        max_kl=float(kl.max()),
        top1=float((exact.argmax(-1) == other.argmax(-1)).double().mean()),
        max_abs_logit_gap=float((exact - other).abs().max()),
        logit_range=float(exact.abs().max()),
    )


def decode_logits(llm: LLM, ids: list[int]) -> torch.Tensor:
    """Teacher-forced logits of `ids` (positions 0..len-1) with every token after the first through the decode
    kernels, as a (len(ids), vocab) CPU tensor."""
    from .engine.model_runner import Logits, SeqChunk

    with llm.engine.scratch_blocks(len(ids)) as (table,):
        return llm.runner.run([SeqChunk(ids, 0, table, Logits.ALL, prompt_len=1)]).cpu()
