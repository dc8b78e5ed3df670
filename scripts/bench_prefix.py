"""Prefix caching: time to first token of a request sharing a 1,000-token prefix with a finished one.

    python scripts/bench_prefix.py [MODEL] [--prefix-tokens 1000]

Prints one JSON object: the first request's TTFT (cold cache), the second's (prefix cached), their ratio.
"""

from __future__ import annotations

import argparse
import json

from forwardpass import LLM, GenerationStats, SamplingParams

TEXT = (
    "In the beginning the universe was created. This has made a lot of people very angry and been widely "
    "regarded as a bad move. "
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default=None)
    ap.add_argument("--prefix-tokens", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    llm = LLM(args.model, threads=args.threads)
    prefix = llm.tokenizer.encode(TEXT * (args.prefix_tokens // 20 + 10))[: args.prefix_tokens]
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True)
    warm = GenerationStats()
    list(llm.stream([5] * 64, params, stats=warm))  # warm-up, unrelated prefix
    first, second = GenerationStats(), GenerationStats()
    list(llm.stream(prefix + llm.tokenizer.encode(" Question one?"), params, stats=first))
    list(llm.stream(prefix + llm.tokenizer.encode(" Another question?"), params, stats=second))
    print(
        json.dumps(
            {
                "prefix_tokens": args.prefix_tokens,
                "first_ttft_ms": round(first.ttft_s * 1000, 1),
                "second_ttft_ms": round(second.ttft_s * 1000, 1),
                "second_cached_tokens": second.cached_tokens,
                "speedup": round(first.ttft_s / second.ttft_s, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
