"""`KernelChoice`: which kernels a model is loaded with, decided once before the load and passed down with it
(`models.base.LoadOptions.kernels`) to every `Linear`, the attention and the native step.

`LLM` builds it from `EngineConfig.cpu` (`select.select_kernels`); tests and benchmarks build their own to reach a
backend (the PyTorch attention beside the native Linears, the int8 fallback where torch has the int4 kernel, ...)
instead of patching module globals.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .native import NativeLibrary

# torch >= 2.6 has the CPU int4 kernel; older releases take the other backends
HAS_INT4_CPU = hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


@dataclass(frozen=True)
class KernelChoice:
    native: NativeLibrary | None = None  # the CPU kernels (a build of csrc/); None: the PyTorch layers only
    int4_cpu: bool = HAS_INT4_CPU  # Q4_0/Q4_1/Q4_K Linears on CPU through torch's int4 kernel (without `native`)
    native_attention: bool = True  # the native attention kernel, where `native` is set
    native_step: bool = True  # the one-call native step, where `native` is set and every weight is a tile type

    def __post_init__(self) -> None:
        if self.int4_cpu and not HAS_INT4_CPU:
            raise ValueError(f"int4_cpu=True needs torch's CPU int4 kernel (torch >= 2.6), not in {torch.__version__}")

    @property
    def attention_lib(self) -> NativeLibrary | None:
        return self.native if self.native_attention else None

    @property
    def step_lib(self) -> NativeLibrary | None:
        return self.native if self.native_step else None

    def without_native(self) -> KernelChoice:
        """The same choice with no native library (a model off the CPU, or not in fast mode)."""
        return KernelChoice(None, self.int4_cpu, self.native_attention, self.native_step)
