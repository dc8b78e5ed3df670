"""The prompt path every quantized `Linear` shares: a bf16 GEMM on a weight dequantized just in time, in row chunks
small enough to stay in cache (and never a full bf16 copy of a large head in memory)."""
from __future__ import annotations

from typing import Callable

import torch


def gemm_in_chunks(x: torch.Tensor, n: int, step: int,
                   weight_rows: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
    """y = x @ W^T: x (T, K) bf16 -> (T, n) bf16, W's rows start..stop given as (rows, K) bf16 by
    `weight_rows(start, stop)`, `step` rows at a time."""
    if step >= n:
        return torch.matmul(x, weight_rows(0, n).t())
    y = torch.empty(x.shape[0], n, dtype=torch.bfloat16, device=x.device)
    for start in range(0, n, step):
        stop = min(n, start + step)
        y[:, start:stop] = torch.matmul(x, weight_rows(start, stop).t())
    return y
