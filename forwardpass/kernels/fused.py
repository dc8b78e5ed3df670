"""`MultiLinear`: several projections of one input (q|k|v, gate|up), fused into one matmul where the weights
share a type. Which fusion applies is decided here, per backend: tiles stack their rows without a copy, other
backends get one weight of the concatenated rows, and weights of different types stay separate."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..gguf.weights import QuantWeight
from .choice import KernelChoice
from .linear import Linear, make_linear
from .repack import concat_rows
from .tiles import TileLinear, tile_supports


class MultiLinear:
    """Several projections of one input: `__call__` returns one output per weight, `sizes` wide each."""

    def __init__(self, linears: list[Linear], sizes: list[int]) -> None:
        self.linears, self.sizes = linears, sizes

    def __call__(self, x: torch.Tensor, prefill: bool | None = None) -> list[torch.Tensor]:
        if len(self.linears) == 1:
            return list(self.linears[0](x, prefill).split(self.sizes, dim=-1))
        return [linear(x, prefill) for linear in self.linears]

    def fused(self, x: torch.Tensor, prefill: bool | None = None) -> torch.Tensor:
        """The projections side by side: (T, sum(sizes))."""
        if len(self.linears) == 1:
            return self.linears[0](x, prefill)
        return torch.cat([linear(x, prefill) for linear in self.linears], dim=-1)


def make_multi_linear(
    weights: list[QuantWeight],
    biases: list[torch.Tensor] | None = None,
    *,
    mode: str,
    device: torch.device | str = "cpu",
    release: Callable[[torch.Tensor], None] | None = None,
    kernels: KernelChoice | None = None,
) -> MultiLinear:
    """The projections of `weights` (with `biases`), as `make_linear` would build each, fused where they can be."""
    sizes = [w.shape[0] for w in weights]
    if len({w.ggml_type for w in weights}) == 1:
        bias = torch.cat(biases).to(device) if biases else None
        native = kernels.native if kernels is not None and mode == "fast" else None
        if native is not None and all(tile_supports(w, native) for w in weights):  # tiles are CPU-only
            return MultiLinear([TileLinear(weights, native, bias, release)], sizes)  # rows stacked: no copy
        fused = concat_rows(weights, "+".join(w.name for w in weights))
        linear = make_linear(fused, bias, mode=mode, device=device, release=release, kernels=kernels)
        return MultiLinear([linear], sizes)
    return MultiLinear(
        [
            make_linear(w, b, mode=mode, device=device, release=release, kernels=kernels)
            for w, b in zip(weights, biases or [None] * len(weights))
        ],
        sizes,
    )
