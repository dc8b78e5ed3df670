"""The building blocks every architecture shares: norms, rotary embeddings, activations."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
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

    out = x * cos + turn(x) * sin, where turn(x) pairs each feature with its partner (i + dims/2 for NEOX halves,
    the neighbour for adjacent pairs) and sin carries the rotation's sign; the tables for a step's positions are
    made once (`rotation`) and shared by q, k and every layer with this base. Plain multiplies and adds (never a
    fused complex multiply, whose vector and scalar paths round differently), so a token's result is the same
    whatever else is in the batch."""

    def __init__(
        self, dims: int, base: float, neox: bool, scale: float = 1.0, freq_factors: torch.Tensor | None = None
    ) -> None:
        self.dims, self.base, self.neox, self.scale = dims, base, neox, scale
        inv = _inv_freq(base, dims)
        if freq_factors is not None:  # Llama 3.1 style per-frequency divisors (rope_freqs.weight)
            inv = inv / freq_factors.double()
        self.inv_freq = inv
        self._cos = self._sin = self._signed_sin = torch.empty(0)

    def _tables(self, positions: torch.Tensor) -> None:
        """Grow the cos / sin tables (positions x dims, float32) to cover `positions`."""
        n = int(positions.max()) + 1 if positions.numel() else 1
        if self._cos.shape[0] >= n and self._cos.device == positions.device:
            return
        size = max(n, 2 * self._cos.shape[0], 256)
        angles = torch.outer(torch.arange(size, dtype=torch.float64) / self.scale, self.inv_freq)
        if self.neox:  # halves: feature i pairs with i + dims/2
            angles = torch.cat((angles, angles), dim=-1)
        else:  # adjacent pairs: GGUF llama weights are permuted for this form
            angles = angles.repeat_interleave(2, dim=-1)
        # cos and sin by NumPy, one thread and one code path per element. With torch's, about one process in eight
        # built the same positions' tables differently in the last bit of ~1400 entries (the 700-position table
        # against the one regrown to 1400): a token's RoPE, and so its keys, depended on how long an earlier
        # request had been, and a prompt prefilled twice gave two results
        a = angles.numpy()
        self._cos = torch.from_numpy(np.cos(a)).float().to(positions.device)
        self._sin = torch.from_numpy(np.sin(a)).float().to(positions.device)
        # turn(x) below is (x[pair], ...) unsigned: the first of each pair takes -sin
        sign = torch.ones(self.dims, dtype=torch.float32, device=positions.device)
        if self.neox:
            sign[: self.dims // 2] = -1
        else:
            sign[0::2] = -1
        self._signed_sin = self._sin * sign

    def factors(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(T,) positions -> cos, sin: (T, 1, dims) float32, laid out like the features they rotate (the native
        step's form)."""
        self._tables(positions)
        return self._cos[positions].unsqueeze(1), self._sin[positions].unsqueeze(1)

    def rotation(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(T,) positions -> cos and the signed sin that `__call__` takes: (T, 1, dims) float32 each."""
        self._tables(positions)
        return self._cos[positions].unsqueeze(1), self._signed_sin[positions].unsqueeze(1)

    def __call__(self, x: torch.Tensor, rotation: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x: (T, heads, head_dim) -> rotated, float32."""
        cos, signed_sin = rotation
        rot = x[..., : self.dims].float()
        if self.neox:  # (x[half:], x[:half]); the signed sin makes it (-x[half:], x[:half])
            turned = torch.roll(rot, self.dims // 2, dims=-1)
        else:  # (x1, x0, x3, x2, ...); the signed sin makes it (-x1, x0, -x3, x2, ...)
            turned = rot.unflatten(-1, (-1, 2)).flip(-1).flatten(-2)
        out = rot * cos + turned * signed_sin
        if self.dims == x.shape[-1]:
            return out
        return torch.cat((out, x[..., self.dims :].float()), dim=-1)


def silu_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.silu(gate) * up


def gelu_tanh_mul(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return F.gelu(gate, approximate="tanh") * up


def softcap(x: torch.Tensor, cap: float) -> torch.Tensor:
    return torch.tanh(x / cap) * cap if cap > 0 else x
