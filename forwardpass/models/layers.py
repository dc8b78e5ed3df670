"""The building blocks every architecture shares: norms, rotary embeddings, activations."""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) * weight, computed in float32. x: (..., d) -> float32."""
    return F.rms_norm(x.float(), (x.shape[-1],), weight, eps)  # one fused kernel, row-invariant


@lru_cache(maxsize=16)
def _inv_freq(base: float, dims: int) -> torch.Tensor:
    # float64 angles, cast at the end: positions up to the full context keep their precision
    return 1.0 / (base ** (torch.arange(0, dims, 2, dtype=torch.float64) / dims))


class Rotary:
    """Rotary position embedding over the first `dims` features of each head.

    out = x * cos + rotate(x) * sin, with cos and sin repeated over each feature pair; the tables for a step's
    positions are made once (`factors`) and shared by q, k and every layer with this base. Plain multiplies and
    adds (never a fused complex multiply, whose vector and scalar paths round differently), so a token's result
    is the same whatever else is in the batch."""

    def __init__(self, dims: int, base: float, neox: bool, scale: float = 1.0,
                 freq_factors: torch.Tensor | None = None) -> None:
        self.dims, self.base, self.neox, self.scale = dims, base, neox, scale
        inv = _inv_freq(base, dims)
        if freq_factors is not None:  # Llama 3.1 style per-frequency divisors (rope_freqs.weight)
            inv = inv / freq_factors.double()
        self.inv_freq = inv
        self._cos = self._sin = torch.empty(0)

    def factors(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(T,) positions -> cos, sin: (T, 1, dims) float32, laid out like the features they rotate."""
        n = int(positions.max()) + 1 if positions.numel() else 1
        if self._cos.shape[0] < n or self._cos.device != positions.device:
            size = max(n, 2 * self._cos.shape[0], 256)
            angles = torch.outer(torch.arange(size, dtype=torch.float64) / self.scale, self.inv_freq)
            if self.neox:  # halves: feature i pairs with i + dims/2
                angles = torch.cat((angles, angles), dim=-1)
            else:  # adjacent pairs: GGUF llama weights are permuted for this form
                angles = angles.repeat_interleave(2, dim=-1)
            self._cos = angles.cos().float().to(positions.device)
            self._sin = angles.sin().float().to(positions.device)
        return self._cos[positions].unsqueeze(1), self._sin[positions].unsqueeze(1)

    def __call__(self, x: torch.Tensor, factors: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x: (T, heads, head_dim) -> rotated, float32."""
        cos, sin = factors
        rot = x[..., : self.dims].float()
        if self.neox:
            half = self.dims // 2
            turned = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
        else:
            turned = torch.stack((-rot[..., 1::2], rot[..., 0::2]), dim=-1).flatten(-2)
        out = rot * cos + turned * sin
        if self.dims == x.shape[-1]:
            return out
        return torch.cat((out, x[..., self.dims:].float()), dim=-1)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def gelu_tanh_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.gelu(gate, approximate="tanh") * up


def softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    return torch.tanh(x / cap) * cap if cap > 0 else x


