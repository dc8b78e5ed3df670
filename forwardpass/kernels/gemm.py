"""The matmul every `Linear` shares, and the prompt path of the quantized ones: a bf16 GEMM on a weight dequantized
just in time, in row chunks small enough to stay in cache (and never a full bf16 copy of a large head in memory).

Batch invariance off the CPU: a GPU GEMM library picks its kernel (tile shape, split-K, stream-K) by the problem's
shape, so a row's result can change with the number of rows beside it. There every product runs on blocks of
exactly `ROW_BLOCK` rows (the last one zero-padded): one shape per weight, so one kernel, and a row's result
depends on its own values only. A block no taller than the smallest tile keeps a row's position in the block
from mattering either. On the CPU the kernels compute each row alone already, and the whole batch is one call.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

ROW_BLOCK = 64  # rows per GEMM off the CPU; 0 turns the blocking off (one call for the whole batch)


def row_blocked(x: torch.Tensor) -> bool:
    return x.device.type != "cpu" and ROW_BLOCK > 0


def matmul_rows(x: torch.Tensor, w_t: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """x (T, K) @ w_t (K, N) -> (T, N) in x's dtype (w_t's must match), written to `out` when given. Off the CPU,
    in blocks of exactly `ROW_BLOCK` rows, so that a row's result never depends on the other rows."""
    t = x.shape[0]
    if not row_blocked(x) or t == 0:
        if out is None:
            return torch.matmul(x, w_t)
        out.copy_(torch.matmul(x, w_t))
        return out
    pad = -t % ROW_BLOCK
    xp = (F.pad(x, (0, 0, 0, pad)) if pad else x).contiguous()
    if out is None and t <= ROW_BLOCK:  # one block (every decode step up to ROW_BLOCK sequences): no copy
        return torch.matmul(xp, w_t)[:t]
    if out is None:
        out = torch.empty(t, w_t.shape[1], dtype=torch.result_type(x, w_t), device=x.device)
    for start in range(0, t, ROW_BLOCK):
        stop = min(t, start + ROW_BLOCK)
        out[start:stop] = torch.matmul(xp[start : start + ROW_BLOCK], w_t)[: stop - start]
    return out


def gemm_in_chunks(x: torch.Tensor, n: int, step: int, weight_rows: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
    """y = x @ W^T: x (T, K) bf16 -> (T, n) bf16, W's rows start..stop given as (rows, K) bf16 by
    `weight_rows(start, stop)`, `step` rows at a time."""
    if step >= n:
        return matmul_rows(x, weight_rows(0, n).t())
    y = torch.empty(x.shape[0], n, dtype=torch.bfloat16, device=x.device)
    for start in range(0, n, step):
        stop = min(n, start + step)
        matmul_rows(x, weight_rows(start, stop).t(), out=y[:, start:stop])
    return y
