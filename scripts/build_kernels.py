#!/usr/bin/env python3
"""Compile every build of the native kernels with -Wall -Wextra -Werror: avx512, avx2 (with and without AVX-VNNI)
and neon (with the aarch64 cross compiler where this is not an Arm machine). CI runs it; a warning fails it.

    python scripts/build_kernels.py [--require-cross]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from forwardpass.kernels import native

BUILDS = [
    ("avx512", native.variant_flags("avx512")),
    ("avx2", native.variant_flags("avx2", avxvnni=False)),
    ("avx2+vnni", native.variant_flags("avx2", avxvnni=True)),
    ("neon", native.variant_flags("neon")),
]
X86_CC, ARM_CC = "x86_64-linux-gnu-gcc", "aarch64-linux-gnu-gcc"


def compiler_for(name: str) -> str | None:
    arm = name == "neon"
    here = native._is_arm64() if arm else native._is_x86()
    if here:
        return shutil.which("cc") or shutil.which("gcc")
    return shutil.which(ARM_CC if arm else X86_CC)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--require-cross", action="store_true", help="fail (not skip) where a cross compiler is missing")
    args = ap.parse_args()
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, flags in BUILDS:
            cc = compiler_for(name)
            if cc is None:
                print(f"{name}: SKIPPED (no compiler for it)")
                failed += args.require_cross
                continue
            try:
                native.compile_library(Path(tmp) / f"{name}.so", [*flags, *native.WARNING_FLAGS], cc)
                print(f"{name}: ok ({Path(cc).name} {' '.join(flags)} {' '.join(native.WARNING_FLAGS)})")
            except native.BuildError as e:
                print(f"{name}: FAILED\n{e}")
                failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
