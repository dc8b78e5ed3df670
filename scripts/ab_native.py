#!/usr/bin/env python3
"""Paired A/B timing of two builds of the native library in one process: the model loads once, then decode
steps (and prompt passes) alternate between build A and build B, so machine noise hits both alike.

    python scripts/ab_native.py MODEL --a OLD_CSRC_DIR [--b NEW_CSRC_DIR] [--variant avx2] [--batch 1] [--context 1]

A csrc folder is compiled as the variant's build would be (default B: this checkout's). Prints each build's
median step time and B/A.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from ab_common import alternating, build_from

from forwardpass import LLM
from forwardpass.engine.model_runner import Logits, SeqChunk
from forwardpass.kernels import native


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
        ids = llm.tokenizer.encode("The quick brown fox jumps over the lazy dog. " * max(200, args.context // 5 + 50))
        n = args.context + args.steps + 2
        with llm.engine.scratch_blocks(n + 1, args.batch) as tables:
            for b, t in enumerate(tables):
                llm.runner.run([SeqChunk(ids[b : b + args.context], 0, t, Logits.LAST)])
            pos = args.context

            def steps(name: str) -> float:  # the same positions every round: the same context
                decoder.lib = libs[name]
                t0 = time.perf_counter()
                for i in range(args.steps):
                    p = pos + i
                    llm.runner.run(
                        [SeqChunk([ids[p + b]], p, t, Logits.LAST, prompt_len=1) for b, t in enumerate(tables)]
                    )
                return (time.perf_counter() - t0) / args.steps

            step = alternating(["A", "B"], args.rounds, steps)
        a, b = step["A"], step["B"]
        print(
            f"{llm.system_info()}; batch {args.batch}: decode step A {1000 * a:.2f} ms, B {1000 * b:.2f} ms, "
            f"B/A {b / a:.3f}"
        )
        if args.prompt_tokens:
            with llm.engine.scratch_blocks(args.prompt_tokens) as (table,):

                def prompt(name: str) -> float:
                    decoder.lib = libs[name]
                    t0 = time.perf_counter()
                    llm.runner.run([SeqChunk(ids[: args.prompt_tokens], 0, table, Logits.LAST)])
                    return time.perf_counter() - t0

                pp = alternating(["A", "B"], max(4, args.rounds // 4), prompt)
            pa, pb = pp["A"], pp["B"]
            print(
                f"prompt {args.prompt_tokens}: A {args.prompt_tokens / pa:.1f} tok/s, "
                f"B {args.prompt_tokens / pb:.1f} tok/s, B/A time {pb / pa:.3f}"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
