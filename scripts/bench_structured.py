"""Constrained vs unconstrained decoding speed, through the engine (sampler and masks included).

Each run decodes `batch` requests of `--tokens` tokens together, once under a JSON schema that no output can
finish within that many tokens (an array of at least 60 objects), once without a constraint (ignore_eos), and
reports generated tokens per second from the first token to the last (prefill excluded), median of repeats.

    python scripts/bench_structured.py smollm2-135m-instruct --batch 1,16 --tokens 128
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from forwardpass import LLM, SamplingParams, StructuredOutputsParams

SCHEMA = {
    "type": "object",
    "properties": {
        "people": {
            "type": "array",
            "minItems": 60,
            "items": {
                "type": "object",
                "properties": {"name": {"type": "string"}, "age": {"type": "integer"}, "city": {"type": "string"}},
                "required": ["name", "age", "city"],
            },
        }
    },
    "required": ["people"],
}
PROMPT = "List many people with their name, age and city, as JSON."


def decode_tok_s(llm: LLM, prompts: list[list[int]], params: SamplingParams) -> float:
    engine = llm.engine
    reqs = [engine.add_request(p, params) for p in prompts]
    first = None
    while engine.has_unfinished():
        engine.step()
        if first is None and all(r.first_token_time for r in reqs):
            first = time.perf_counter()
    end = time.perf_counter()
    tokens = sum(len(r.completions[0].output.token_ids) - 1 for r in reqs)
    assert all(r.completions[0].output.finish_reason == "length" for r in reqs)
    return tokens / (end - first)


def sampler_ms(llm: LLM, batch: int, constrained: bool, repeat: int = 200) -> float:
    """Median wall time (the native mask runs on every thread) of the logits processors
    over `batch` rows of random logits, with the masks when constrained (every row's matcher a few tokens into
    a document): the per-step cost the mask adds."""
    import torch

    from forwardpass.sampler import Sampler, SamplingState
    from forwardpass.structured.guide import Guide

    so = StructuredOutputsParams(json=SCHEMA)
    grammar = llm.engine.grammars.compile(so)
    prefix = llm.tokenizer.encode('{"people": [{"name": "Ann Lee", "age": 31, "city": "Oslo"}, {"name": "')
    states = []
    for _ in range(batch):
        st = SamplingState(SamplingParams(temperature=0, max_tokens=10**6))
        if constrained:
            st.guide = Guide(grammar.new_matcher())
            for t in prefix:
                st.guide.accept(t)
        states.append(st)
    logits = torch.randn(batch, llm.vocab_size)
    sampler, times = Sampler(llm.engine.sampler.argmax, llm.engine.sampler.mask_rows), []
    for _ in range(repeat):
        t0 = time.perf_counter()
        sampler.apply_logits_processors(logits, states)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model", nargs="?", default=None)
    ap.add_argument("--batch", default="1,16")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--sampler-only", action="store_true", help="time the logits processors alone, per step")
    args = ap.parse_args()
    llm = LLM(args.model, threads=args.threads)
    if args.sampler_only:
        for batch in [int(b) for b in args.batch.split(",")]:
            row = {
                "batch": batch,
                "processors_cpu_ms": round(sampler_ms(llm, batch, False), 3),
                "with_json_schema_mask_cpu_ms": round(sampler_ms(llm, batch, True), 3),
            }
            print(json.dumps(row), flush=True)
        return
    base = llm.chat_prompt([{"role": "user", "content": PROMPT}])
    so = StructuredOutputsParams(json=SCHEMA)
    llm.engine.grammars.compile(so)
    rows = []
    for batch in [int(b) for b in args.batch.split(",")]:
        prompts = [base + llm.tokenizer.encode(f" #{i}") for i in range(batch)]  # distinct, mostly cached
        free = SamplingParams(temperature=0, max_tokens=args.tokens, ignore_eos=True)
        constrained = SamplingParams(temperature=0, max_tokens=args.tokens, structured_outputs=so)
        decode_tok_s(llm, prompts, free)  # warm-up (and the prefix cache)
        decode_tok_s(llm, prompts, constrained)
        f, c = [], []
        for _ in range(args.repeat):  # interleaved, so that load drifts hit both alike
            f.append(decode_tok_s(llm, prompts, free))
            c.append(decode_tok_s(llm, prompts, constrained))
        row = {
            "batch": batch,
            "tokens": args.tokens,
            "unconstrained_tok_s": round(statistics.median(f), 1),
            "json_schema_tok_s": round(statistics.median(c), 1),
        }
        row["ratio"] = round(row["json_schema_tok_s"] / row["unconstrained_tok_s"], 3)
        rows.append(row)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
