#!/usr/bin/env python3
"""Paired A/B of single native kernels between two builds (`csrc/` folders) in one process, calls alternating so
machine noise hits both alike; prints each build's median time, B/A, and whether the outputs are equal.

    python scripts/ab_kernels.py sample --a OLD_CSRC [--b NEW_CSRC] [--variant avx512]   # the top-p draw
    python scripts/ab_kernels.py tiles --a OLD_CSRC [--variant avx2] [--tokens 16]        # tile matmuls, 1 thread
    python scripts/ab_kernels.py attention --a OLD_CSRC [--variant avx2] [--tokens 8]     # paged attention, 1 thread

`sample`: `NativeLibrary.sample` at temperature 0.7 on random logits (rows x vocabulary, top-p as given).
`tiles`: `tile_matmul` on one thread over random Q8_0 (an 8192 x 576 head) and Q4_1 (1536 x 576) weights.
`attention`: `paged_attention_into` on one thread, each token of its own sequence (as decoding), over bf16 caches of
random keys and values in scattered slots: SmolLM2's heads (9 of dim 64 over 3 KV heads) and Qwen2.5's (14 of
dim 64 over 2), contexts of 160 and 1000 tokens.
Builds are compiled by `ab_common.build_from` (`FORWARDPASS_AVXVNNI=0` for plain AVX2).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import gguf
import numpy as np
import torch
from ab_common import alternating, build_from
from gguf import GGMLQuantizationType as T

from forwardpass.gguf.weights import QuantWeight
from forwardpass.kernels import native
from forwardpass.kernels.native import NativeLibrary
from forwardpass.kernels.tiles import TileMatrix, tile_matmul


def paired(calls: dict[str, Callable[[], torch.Tensor]], rounds: int) -> tuple[dict[str, float], bool]:
    """Median seconds per build over `rounds` alternating calls, and whether the builds' last outputs are equal."""
    out: dict[str, torch.Tensor] = {}

    def call(name: str) -> float:
        t0 = time.perf_counter()
        out[name] = calls[name]()
        return time.perf_counter() - t0

    med = alternating(list(calls), rounds, call)
    first, second = out.values()
    return med, torch.equal(first, second)


def report(label: str, med: dict[str, float], same: bool) -> None:
    a, b = med["A"], med["B"]
    print(f"{label}: A {a * 1e3:.3f} ms, B {b * 1e3:.3f} ms, B/A {b / a:.3f}, outputs equal: {same}")


def ab_sample(libs: dict[str, NativeLibrary], rounds: int) -> None:
    torch.set_num_threads(2)
    cases = [(8, 49152, 0.9), (1, 49152, 0.9), (8, 151936, 0.95), (8, 262144, 0.9), (8, 49152, 1.0)]
    for rows, vocab, top_p in cases:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(rows, vocab, generator=gen) * 3
        temps, u = torch.full((rows,), 0.7), torch.rand(rows, 2, generator=gen)
        tp = torch.full((rows,), top_p) if top_p < 1 else None
        calls = {k: (lambda lib=lib: lib.sample(x, temps, u, tp)) for k, lib in libs.items()}
        report(f"sample {rows} x {vocab}, top_p {top_p}", *paired(calls, rounds))


def quantized(qtype: T, rows: int, cols: int, seed: int) -> QuantWeight:
    """Gaussian weights quantized by gguf-py."""
    data = (np.random.default_rng(seed).standard_normal((rows, cols)) * 0.05).astype(np.float32)
    raw = np.ascontiguousarray(gguf.quants.quantize(data, qtype)).view(np.uint8).reshape(rows, -1)
    return QuantWeight(f"{qtype.name} {rows} x {cols}", int(qtype), (rows, cols), torch.from_numpy(raw.copy()))


def ab_tiles(libs: dict[str, NativeLibrary], tokens: int, rounds: int) -> None:
    torch.set_num_threads(1)
    for qtype, rows, cols in ((T.Q8_0, 8192, 576), (T.Q4_1, 1536, 576)):
        weight = quantized(qtype, rows, cols, seed=1)
        mats = {k: [TileMatrix([weight], lib)] for k, lib in libs.items()}
        x = torch.randn(tokens, cols, generator=torch.Generator().manual_seed(2))
        calls = {k: (lambda m=m: tile_matmul(m, x)) for k, m in mats.items()}
        med, same = paired(calls, rounds)
        report(f"tiles {qtype.name} {rows} x {cols}, {tokens} tokens, 1 thread", med, same)
        print(f"  {tokens * rows * cols / med['B'] / 1e9:.1f} GMAC/s (B)")


def ab_attention(libs: dict[str, NativeLibrary], tokens: int, rounds: int) -> None:
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(3)
    for heads, kv_heads, dim in ((9, 3, 64), (14, 2, 64)):
        for context in (160, 1000):
            slots = tokens * context
            k = (torch.randn(slots, kv_heads, dim, generator=gen)).to(torch.bfloat16)
            v = (torch.randn(slots, kv_heads, dim, generator=gen)).to(torch.bfloat16)
            ctx = torch.randperm(slots, generator=gen).reshape(tokens, context)  # scattered, as pages are
            q = torch.randn(tokens, heads, dim, generator=gen)
            seq, lens = torch.arange(tokens), torch.full((tokens,), context)
            calls = {
                name: (lambda lib=lib: lib.paged_attention_into(q, k, v, ctx, seq, lens, dim**-0.5, 0))
                for name, lib in libs.items()
            }
            report(
                f"attention {heads} heads / {kv_heads} KV x {dim}, {tokens} tokens of {context}", *paired(calls, rounds)
            )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kernel", choices=["sample", "tiles", "attention"])
    ap.add_argument("--a", required=True, type=Path, help="csrc folder of build A")
    ap.add_argument("--b", type=Path, default=native.CSRC, help="csrc folder of build B (default: this checkout)")
    ap.add_argument("--variant", default=None, help="avx512, avx2 or neon (default: the best this CPU runs)")
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    variant = args.variant or native.runnable_variants()[0]
    with tempfile.TemporaryDirectory() as tmp:
        libs = {
            name: build_from(path, variant, Path(tmp) / f"{name}.so") for name, path in (("A", args.a), ("B", args.b))
        }
        print(f"build: {libs['B'].name}")
        if args.kernel == "sample":
            ab_sample(libs, args.rounds)
        elif args.kernel == "attention":
            ab_attention(libs, args.tokens, args.rounds)
        else:
            ab_tiles(libs, args.tokens, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
