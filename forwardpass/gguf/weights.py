"""Quantized weights as they sit in the GGUF file, and the strict loader that hands them to a model."""

from __future__ import annotations

from dataclasses import dataclass

import gguf
import numpy as np
import torch

from ..errors import GGUFError, UnsupportedModelError
from .dequant import DEQUANTIZERS, block_info, dequantize
from .reader import GGUFFile


@dataclass
class QuantWeight:
    """A tensor in its GGUF encoding: raw bytes, one row per output feature, never expanded at rest."""

    name: str
    ggml_type: int
    shape: tuple[int, ...]  # torch order: (out_features, in_features) for a matrix
    raw: torch.Tensor  # uint8 (rows, row_bytes); a view of the file's memory map until moved

    @property
    def rows(self) -> int:
        return self.shape[0] if len(self.shape) > 1 else 1

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize(self.raw, self.ggml_type, self.shape, self.name).to(dtype)

    def dequantize_rows(self, ids: torch.Tensor) -> torch.Tensor:
        """Dequantize only the rows `ids` (an embedding lookup): (n,) -> (n, in_features) float32."""
        block_size, type_size = block_info(self.ggml_type)
        rows = self.raw.index_select(0, ids)  # (n, row_bytes)
        blocks = rows.reshape(-1, type_size)
        values = DEQUANTIZERS[self.ggml_type](blocks)  # (n * blocks_per_row, block_size)
        return values.reshape(ids.shape[0], self.shape[-1])

    def to(self, device: torch.device | str) -> "QuantWeight":
        return QuantWeight(self.name, self.ggml_type, self.shape, self.raw.to(device))


class WeightStore:
    """Hands out the file's tensors by name and checks, at the end, that every tensor was claimed."""

    def __init__(self, gguf: GGUFFile) -> None:
        self.gguf = gguf
        self.claimed: set[str] = set()

    def has(self, name: str) -> bool:
        return name in self.gguf.tensors

    def get(self, name: str, shape: tuple[int, ...]) -> QuantWeight:
        """The tensor `name`, which must exist with exactly `shape` (torch order)."""
        info = self.gguf.tensors.get(name)
        if info is None:
            raise GGUFError(f"tensor {name!r} is missing from the model file")
        if tuple(info.shape) != tuple(shape):
            raise GGUFError(f"tensor {name!r} has shape {tuple(info.shape)}, expected {tuple(shape)}")
        if info.ggml_type not in DEQUANTIZERS:
            try:
                type_name = gguf.GGMLQuantizationType(info.ggml_type).name
            except ValueError:
                type_name = f"ggml type {info.ggml_type}"
            raise UnsupportedModelError(f"tensor {name!r} uses the unsupported type {type_name}")
        self.claimed.add(name)
        data = np.asarray(self.gguf.tensor_bytes(name))
        raw = torch.from_numpy(data)
        rows = shape[0] if len(shape) > 1 else 1
        return QuantWeight(name, info.ggml_type, tuple(shape), raw.view(rows, -1))

    def release(self, raw: torch.Tensor) -> None:
        """The caller has copied these file bytes (repacked them): drop their pages from RSS."""
        if raw.device.type == "cpu" and raw.is_contiguous():
            self.gguf.release_range(raw.data_ptr(), raw.numel() * raw.element_size())

    def get_f32(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """A small tensor (norm weight, bias) dequantized to float32 at load."""
        return self.get(name, shape).dequantize()

    def optional(self, name: str, shape: tuple[int, ...]) -> QuantWeight | None:
        return self.get(name, shape) if self.has(name) else None

    def check_all_claimed(self) -> None:
        leftover = [n for n in self.gguf.tensors if n not in self.claimed]
        if leftover:
            shown = ", ".join(leftover[:8]) + (" ..." if len(leftover) > 8 else "")
            raise GGUFError(f"the model file holds {len(leftover)} unexpected tensor(s): {shown}")
