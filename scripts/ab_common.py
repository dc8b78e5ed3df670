"""What the paired A/B scripts share (`ab_native.py`, `ab_kernels.py`, `ab_sampler.py`): building a `csrc/` folder as
a variant's library, and timing two or more alternatives in alternating rounds, so machine noise hits all alike."""

from __future__ import annotations

import os
import statistics
from pathlib import Path
from typing import Callable

from forwardpass.kernels import native


def build_from(csrc: Path, variant: str, out: Path) -> native.NativeLibrary:
    """That folder's C files compiled as `variant`'s build would be (plain AVX2 where FORWARDPASS_AVXVNNI=0)."""
    avxvnni = None if variant != "avx2" else os.environ.get("FORWARDPASS_AVXVNNI", "1") != "0"
    flags = [*native.variant_flags(variant, avxvnni), "-mtune=native", "-I", str(csrc)]
    folder_sources = sorted(csrc.glob("*.c"))
    old = native.sources
    native.sources = lambda: folder_sources
    try:
        native.compile_library(out, flags)
    finally:
        native.sources = old
    return native.NativeLibrary(out, variant)


def alternating(names: list[str], rounds: int, measure: Callable[[str], float]) -> dict[str, float]:
    """The median of `measure(name)` (seconds) per name over `rounds` rounds, the order reversed every other round."""
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            times[name].append(measure(name))
    return {name: statistics.median(t) for name, t in times.items()}
