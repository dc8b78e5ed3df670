#!/usr/bin/env python3
"""Paired A/B of the sampler's draw in the engine: decode steps of N sequences at a temperature, the native
kernels' draw (`sample_rows`) and the PyTorch draw alternating in one process, so machine noise hits both alike.

    python scripts/ab_sampler.py [--model smollm2-135m-instruct] [--seqs 8] [--temperature 0.7]

Each round times `generate` with 65 and with 1 new tokens (prefix caching off, so both compute the prompts) and
takes the difference over 64: one decode step of the engine, scheduling, sampling and detokenization included.
"""

from __future__ import annotations

import argparse
import sys
import time

from ab_common import alternating

from forwardpass import LLM, SamplingParams
from forwardpass.bench import bench_prompt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--seqs", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    llm = LLM(args.model, threads=args.threads)
    sampler = llm.engine.sampler
    if sampler.native_draw is None:
        print("no native kernels here: nothing to compare", file=sys.stderr)
        return 1
    llm.engine.block_manager.enable_prefix_caching = False
    prompt = bench_prompt(llm, 128)
    prompts = [prompt[i:] + prompt[:i] for i in range(args.seqs)]
    draws = {"native": sampler.native_draw, "torch": None}

    def run(max_tokens: int) -> float:
        params = SamplingParams(max_tokens=max_tokens, temperature=args.temperature, ignore_eos=True)
        t0 = time.perf_counter()
        llm.generate(prompts, params)
        return time.perf_counter() - t0

    def step(name: str) -> float:
        sampler.native_draw = draws[name]
        one = run(1)
        return (run(65) - one) / 64

    med = alternating(["native", "torch"], args.rounds, step)
    a, b = med["torch"], med["native"]
    print(
        f"{llm.system_info()}; {args.seqs} sequences at temperature {args.temperature}: engine decode step, "
        f"PyTorch draw {1000 * a:.2f} ms, native draw {1000 * b:.2f} ms, native/PyTorch {b / a:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
