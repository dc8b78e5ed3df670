"""Speculative decoding against the plain engine, side by side, on one stream.

One model is loaded with the speculative config; each repeat runs the plain engine (its speculator switched
off) and then the speculative one on the same prompt, alternating, so both see the same machine load. Two
prompts: copy-heavy (the chat model is asked to repeat a ~900-character passage given in the prompt) and free
text. Figures: decode tokens/s (first token to last, so prompt processing is left out), median of the repeats,
the speed-up, and the acceptance figures. Greedy, so both runs produce the same tokens (checked).

    python scripts/bench_spec.py smollm2-135m-instruct \
        --speculative-config '{"method": "ngram", "num_speculative_tokens": 4}'
    python scripts/bench_spec.py qwen2.5-coder-1.5b-instruct \
        --speculative-config '{"method": "draft", "model": "qwen2.5-coder-0.5b-instruct", "num_speculative_tokens": 4}'
"""

from __future__ import annotations

import argparse
import json

from forwardpass import LLM
from forwardpass.bench import compare_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--speculative-config", required=True)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=200)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = ap.parse_args()
    llm = LLM(args.model, speculative_config=args.speculative_config, threads=args.threads)
    results = compare_spec(llm, args.repeats, args.max_tokens)
    if args.json:
        print(json.dumps({"model": args.model, "speculative_config": json.loads(args.speculative_config), **results}))
        return
    print(f"{llm.system_info()}\nspeculative config: {args.speculative_config}, median of {args.repeats}")
    print(
        f"{'prompt':<8}{'tokens':>8}{'plain tok/s':>13}{'spec tok/s':>12}{'speed-up':>10}{'accept':>9}{'mean len':>10}"
    )
    for name, r in results.items():
        print(
            f"{name:<8}{r['tokens']:>8}{r['plain_tok_s']:>13}{r['spec_tok_s']:>12}{r['speedup']:>9}x"
            f"{r['acceptance_rate']:>9.1%}{r['mean_accepted_length']:>10}"
        )


if __name__ == "__main__":
    main()
