#!/usr/bin/env python3
"""Paired A/B timing of two builds of the native library in one process: the model loads once, then decode
steps (and prompt passes) alternate between build A and build B, so machine noise hits both alike.

    python scripts/ab_native.py MODEL --a OLD_CSRC_DIR [--b NEW_CSRC_DIR] [--variant avx2] [--batch 1] [--context 1]

A csrc folder is compiled as the variant's build would be (default B: this checkout's). Prints each build's
median step time and B/A.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from forwardpass import LLM
from forwardpass.engine.model_runner import Logits, SeqChunk
from forwardpass.kernels import native


def build_from(csrc: Path, variant: str, out: Path) -> native.NativeLibrary:
    import os

    avxvnni = None if variant != "avx2" else os.environ.get("FORWARDPASS_AVXVNNI", "1") != "0"
    flags = [*native.variant_flags(variant, avxvnni), "-mtune=native", "-I", str(csrc)]
    cmd_sources = sorted(csrc.glob("*.c"))
    old = native.sources
    native.sources = lambda: cmd_sources  # compile that folder's files
    try:
        native.compile_library(out, flags)
    finally:
        native.sources = old
    return native.NativeLibrary(out, variant)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--a", required=True, type=Path, help="csrc folder of build A")
    ap.add_argument("--b", type=Path, default=native.CSRC, help="csrc folder of build B (default: this checkout)")
    ap.add_argument("--variant", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--steps", type=int, default=10, help="decode steps per round and build")
    ap.add_argument("--prompt-tokens", type=int, default=0, help="also time prompt passes of this many tokens")
    ap.add_argument("--context", type=int, default=1, help="tokens each sequence holds before the timed steps")
    args = ap.parse_args()
    llm = LLM(args.model, threads=args.threads, cpu=args.variant)
    variant = llm.kernels.variant
    with tempfile.TemporaryDirectory() as tmp:
        libs = {
            "A": build_from(args.a, variant, Path(tmp) / "a.so"),
            "B": build_from(args.b, variant, Path(tmp) / "b.so"),
        }
        decoder = llm.model.native_decoder
        ids = llm.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * 200)
        times: dict[str, list[float]] = {"A": [], "B": [], "pA": [], "pB": []}
        n = args.context + args.steps + 2
        with llm.engine.scratch_blocks(n + 1, args.batch) as tables:
            for b, t in enumerate(tables):
                llm.runner.run([SeqChunk(ids[b : b + args.context], 0, t, Logits.LAST)])
            pos = args.context
            for r in range(args.rounds):
                for name in "AB" if r % 2 == 0 else "BA":
                    decoder.lib = libs[name]
                    t0 = time.perf_counter()
                    for _ in range(args.steps):
                        llm.runner.run(
                            [SeqChunk([ids[pos + b]], pos, t, Logits.LAST, prompt_len=1) for b, t in enumerate(tables)]
                        )
                        pos += 1
                    times[name].append((time.perf_counter() - t0) / args.steps)
                    pos -= args.steps  # overwrite the same positions: every round decodes the same context
        if args.prompt_tokens:
            with llm.engine.scratch_blocks(args.prompt_tokens) as (table,):
                for r in range(max(4, args.rounds // 4)):
                    for name in "AB" if r % 2 == 0 else "BA":
                        decoder.lib = libs[name]
                        t0 = time.perf_counter()
                        llm.runner.run([SeqChunk(ids[: args.prompt_tokens], 0, table, Logits.LAST)])
                        times["p" + name].append(time.perf_counter() - t0)
    a, b = statistics.median(times["A"]), statistics.median(times["B"])
    print(
        f"{llm.system_info()}; batch {args.batch}: decode step A {1000 * a:.2f} ms, B {1000 * b:.2f} ms, "
        f"B/A {b / a:.3f}"
    )
    if args.prompt_tokens:
        pa, pb = statistics.median(times["pA"]), statistics.median(times["pB"])
        print(
            f"prompt {args.prompt_tokens}: A {args.prompt_tokens / pa:.1f} tok/s, B {args.prompt_tokens / pb:.1f} tok/s, "
            f"B/A time {pb / pa:.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
