"""The building blocks every architecture shares: norms, rotary embeddings, activations."""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x * rsqrt(mean(x^2) + eps) * weight, computed in float32. x: (..., d)."""
    x32 = x.float()
    out = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return (out * weight).to(x.dtype)


@lru_cache(maxsize=16)
def _inv_freq(base: float, dims: int) -> torch.Tensor:
    # float64 angles, cast at the end: positions up to the full context keep their precision
    return 1.0 / (base ** (torch.arange(0, dims, 2, dtype=torch.float64) / dims))


class Rotary:
    """Rotary position embedding over the first `dims` features of each head, cos/sin cached per position."""

    def __init__(self, dims: int, base: float, neox: bool, scale: float = 1.0,
                 freq_factors: torch.Tensor | None = None) -> None:
        self.dims, self.base, self.neox, self.scale = dims, base, neox, scale
        inv = _inv_freq(base, dims)
        if freq_factors is not None:  # Llama 3.1 style per-frequency divisors (rope_freqs.weight)
            inv = inv / freq_factors.double()
        self.inv_freq = inv
        self._cos = self._sin = torch.empty(0)

    def _tables(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if self._cos.shape[0] < n or self._cos.device != device:
            size = max(n, 2 * self._cos.shape[0], 256)
            pos = torch.arange(size, dtype=torch.float64) / self.scale
            angles = torch.outer(pos, self.inv_freq)  # (size, dims / 2)
            self._cos = angles.cos().float().to(device)
            self._sin = angles.sin().float().to(device)
        return self._cos, self._sin

    def __call__(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: (T, heads, head_dim); positions: (T,) -> rotated x, same shape and dtype."""
        cos_t, sin_t = self._tables(int(positions.max()) + 1 if positions.numel() else 1, x.device)
        cos = cos_t[positions].unsqueeze(1)  # (T, 1, dims / 2)
        sin = sin_t[positions].unsqueeze(1)
        rot, rest = x[..., : self.dims].float(), x[..., self.dims:]
        if self.neox:  # halves: (x0..x_{d/2-1}) pairs with (x_{d/2}..)
            x1, x2 = rot.chunk(2, dim=-1)
            out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        else:  # adjacent pairs (x0, x1), (x2, x3), ...: GGUF llama weights are permuted for this form
            x1, x2 = rot[..., 0::2], rot[..., 1::2]
            out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
        out = out.to(x.dtype)
        return torch.cat((out, rest), dim=-1) if rest.shape[-1] else out


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def gelu_tanh_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.gelu(gate, approximate="tanh") * up


def softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    return torch.tanh(x / cap) * cap if cap > 0 else x


