"""Which native build runs: `select_kernels(cpu)` picks the best variant this CPU runs, or the one asked for
(``LLM(cpu=...)``, ``--cpu``, or ``FORWARDPASS_CPU=avx512|avx2|neon|torch`` as the default of both; ``torch`` runs
the PyTorch layers only), builds and loads it (`native.py`), and self-tests it on the tile kernels (`tiles.py`)
before any model uses it. Above `native.py` and `tiles.py`, so neither imports the other back.
"""

from __future__ import annotations

import functools
import logging
import os
import platform

from ..config import CPU_CHOICES
from .native import VARIANTS, ABIError, BuildError, NativeLibrary, build, cpu_features, cpu_runs, runnable_variants
from .tiles import self_test

logger = logging.getLogger(__name__)


def load_library(variant: str, avxvnni: bool | None = None) -> NativeLibrary | None:
    """`variant`'s library, built if needed and self-tested; None (with a WARNING saying why) where it cannot be.
    `avxvnni=False` builds avx2 without AVX-VNNI even where the CPU has it (to measure or test plain AVX2)."""
    if variant not in VARIANTS:
        raise ValueError(f"unknown kernel variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    if not cpu_runs(variant):
        return None
    has_vnni = variant == "avx2" and "avx_vnni" in cpu_features()
    return _load_library(variant, has_vnni if avxvnni is None else has_vnni and avxvnni)


@functools.lru_cache(maxsize=None)  # one load per build: a process maps each library once
def _load_library(variant: str, avxvnni: bool) -> NativeLibrary | None:
    try:
        lib = NativeLibrary(build(variant, avxvnni), variant)
    except BuildError as e:
        logger.warning(
            "could not build the %s kernels, so the PyTorch layers run instead (several times slower on CPU): %s",
            variant,
            e,
        )
        return None
    except (OSError, ABIError) as e:
        logger.warning("could not load the %s kernels, so the PyTorch layers run instead: %s", variant, e)
        return None
    failed = self_test(lib)
    if failed:
        logger.warning("the %s kernels failed their self-test (%s), so the PyTorch layers run instead", variant, failed)
        return None
    return lib


def resolve_cpu(cpu: str | None = None) -> str:
    """The kernel choice asked for: `cpu`, else $FORWARDPASS_CPU, else "auto" (FORWARDPASS_NATIVE=0: "torch")."""
    choice = (
        cpu or os.environ.get("FORWARDPASS_CPU") or ("torch" if os.environ.get("FORWARDPASS_NATIVE") == "0" else "auto")
    )
    choice = choice.strip().lower()
    if choice not in CPU_CHOICES:
        raise ValueError(f"cpu must be one of {', '.join(CPU_CHOICES)}, got {choice!r}")
    return choice


def select_kernels(cpu: str | None = None) -> NativeLibrary | None:
    """The native library to run: the best variant this CPU runs ("auto"), or the one asked for; None for
    "torch" or where no variant builds. Asking for a variant this CPU cannot execute is a ValueError.
    FORWARDPASS_AVXVNNI=0 keeps AVX-VNNI out of the avx2 build (plain AVX2, to compare with builds without it)."""
    choice = resolve_cpu(cpu)
    if choice == "torch":
        return None
    avxvnni = False if os.environ.get("FORWARDPASS_AVXVNNI") == "0" else None
    if choice != "auto":
        if not cpu_runs(choice):
            have = ", ".join(runnable_variants()) or "none"
            raise ValueError(
                f"cpu={choice!r}: this CPU ({platform.machine()}) cannot execute the {choice} kernels "
                f"(it runs: {have}, torch)"
            )
        return load_library(choice, avxvnni)
    for variant in runnable_variants():
        lib = load_library(variant, avxvnni)
        if lib is not None:
            return lib
    if not runnable_variants():
        logger.warning(
            "no native kernels for this CPU (%s); the PyTorch layers run (several times slower)", platform.machine()
        )
    return None
