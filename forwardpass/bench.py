"""`forwardpass bench`: llama-bench style figures for one model.

pp: tokens/s to process a prompt of `prompt_tokens` tokens from an empty cache, in one batch.
tg: tokens/s decoding `gen_tokens` tokens one step at a time after a 1-token prompt (greedy argmax, no sampler),
    summed over `batch` sequences decoding together.
Each figure is the median of `repeat` runs after a warm-up run, like llama-bench.
With a speculative config: `spec`, the engine's decode tokens/s on one greedy stream without and with speculation
(alternating, same load), on a copy-heavy prompt and on free text, with the acceptance figures (`compare_spec`).
"""

from __future__ import annotations

import os
import resource
import statistics
import sys
import time

import psutil
import torch

from .config import EngineConfig
from .engine.model_runner import Logits, SeqChunk
from .engine.spec_decode import SpecStats
from .kernels.native import argmax_fn
from .llm import LLM, freeze_heap
from .sampling import SamplingParams

TEXT = "The quick brown fox jumps over the lazy dog. "


def bench_prompt(llm: LLM, n: int) -> list[int]:
    ids = llm.tokenizer.encode(TEXT * (n // 4 + 8))[:n]
    if len(ids) < n:
        raise ValueError(f"could not build a {n}-token prompt")
    return ids


def _time_prefill(llm: LLM, prompt: list[int]) -> float:
    with llm.engine.scratch_blocks(len(prompt)) as (table,):
        t0 = time.perf_counter()
        logits = llm.runner.run([SeqChunk(prompt, 0, table, Logits.LAST)])
        int(logits.argmax(-1)[0])  # the first token: includes any device sync
        return time.perf_counter() - t0


def time_decode(llm: LLM, prompt: list[int], gen_tokens: int, batch: int) -> float:
    argmax = argmax_fn(llm.kernels)
    with llm.engine.scratch_blocks(1 + gen_tokens, batch) as tables:
        llm.runner.run([SeqChunk([prompt[b % len(prompt)]], 0, t, Logits.LAST) for b, t in enumerate(tables)])
        t0 = time.perf_counter()
        for i in range(gen_tokens):
            chunks = [
                SeqChunk([prompt[(1 + i + b) % len(prompt)]], 1 + i, t, Logits.LAST, prompt_len=1)
                for b, t in enumerate(tables)
            ]  # generated tokens: the decode kernels
            next_ids = argmax(llm.runner.run(chunks))
        next_ids.tolist()
        return time.perf_counter() - t0


PASSAGE = (
    "The lighthouse at Carrow Point was built in 1871 from granite quarried two miles inland and hauled to the "
    "cliff on sledges. Its lamp burned colza oil until 1904, when a paraffin vapour burner was fitted, and its "
    "keepers kept a log of every ship that passed, every storm and every visitor. The last keeper, Ellen Marsh, "
    "left in 1987 when the light was automated; she wrote that the silence after the final watch was the "
    "loudest thing she had ever heard. Today the tower is open to visitors on summer weekends. A narrow spiral "
    "of one hundred and twelve steps leads to the lantern room, where the original Fresnel lens still turns, "
    "and the view on a clear day reaches the islands forty miles to the west. The keepers' cottages at its foot "
    "house a small museum of charts, logbooks and the brass instruments the keepers used to measure the wind."
)
SPEC_PROMPTS = {
    "copy": f"Here is a passage:\n\n{PASSAGE}\n\nRepeat the passage above exactly, word for word.",
    "free": "Write a short story about a fox who learns to play the violin.",
}


def time_engine_decode(llm: LLM, prompt: list[int], max_tokens: int) -> tuple[float, list[int]]:
    """Decode tokens/s of one greedy request (first token to last) and its tokens."""
    engine = llm.engine
    request = engine.add_request(prompt, SamplingParams(temperature=0, max_tokens=max_tokens))
    first = None
    while engine.has_unfinished():
        engine.step()
        if first is None and request.completions[0].output.token_ids:
            first = (time.perf_counter(), len(request.completions[0].output.token_ids))
    end = time.perf_counter()
    tokens = request.completions[0].output.token_ids
    return (len(tokens) - first[1]) / (end - first[0]), tokens


def compare_spec(llm: LLM, repeats: int, max_tokens: int) -> dict[str, dict]:
    """Per prompt of `SPEC_PROMPTS`: the plain engine's and the speculative engine's decode tokens/s (medians of
    `repeats` alternating pairs after one warm-up pair), the speed-up and the acceptance figures. Raises
    RuntimeError if the two outputs differ (both are greedy)."""
    speculator = llm.engine.speculator
    assert speculator is not None, "compare_spec needs an engine with speculative decoding"
    results = {}
    for name, text in SPEC_PROMPTS.items():
        messages = [{"role": "user", "content": text}]
        prompt = llm.chat_prompt(messages) if llm.chat_template is not None else llm.tokenizer.encode(text)
        prompt = prompt[-(llm.ctx - max_tokens - 1) :]  # a model of a short context sees the prompt's end
        plain_s, spec_s = [], []
        before, speculator.stats = speculator.stats, SpecStats()
        try:
            for i in range(repeats + 1):
                llm.engine.speculator = None
                plain, plain_tokens = time_engine_decode(llm, prompt, max_tokens)
                llm.engine.speculator = speculator
                spec, spec_tokens = time_engine_decode(llm, prompt, max_tokens)
                if spec_tokens != plain_tokens:
                    raise RuntimeError(f"{name}: the speculative output differs from the plain engine's")
                if i:
                    plain_s.append(plain)
                    spec_s.append(spec)
            stats = speculator.stats
        finally:
            llm.engine.speculator, speculator.stats = speculator, before
        plain, spec = statistics.median(plain_s), statistics.median(spec_s)
        results[name] = {
            "tokens": len(plain_tokens),
            "plain_tok_s": round(plain, 1),
            "spec_tok_s": round(spec, 1),
            "speedup": round(spec / plain, 2),
            "acceptance_rate": round(stats.acceptance_rate, 3),
            "mean_accepted_length": round(stats.mean_accepted_length, 2),
        }
    return results


def run_bench(
    config: EngineConfig, *, prompt_tokens: int = 512, gen_tokens: int = 128, repeat: int = 3, batch: int = 1
) -> dict:
    """The figures for `config`'s model; without a KV budget in `config`, the cache holds what the runs need."""
    t0 = time.perf_counter()
    if config.kv_tokens is None and config.kv_memory is None:
        config = config.replace(kv_tokens=max(batch * (gen_tokens + 16), prompt_tokens + 16))
    llm = LLM(config=config)
    freeze_heap()
    print(llm.system_info(), file=sys.stderr, flush=True)
    load_s = time.perf_counter() - t0
    rss_loaded = psutil.Process().memory_info().rss / 2**20
    prompt = bench_prompt(llm, prompt_tokens)
    pp_s = [_time_prefill(llm, prompt) for _ in range(repeat + 1)][1:]
    tg_s = [time_decode(llm, prompt, gen_tokens, batch) for _ in range(repeat + 1)][1:]
    tg_tok_s = batch * gen_tokens / statistics.median(tg_s)
    spec = compare_spec(llm, repeat, gen_tokens) if config.speculative_config is not None else None
    size = os.path.getsize(llm.path)
    kv_bytes = llm.runner.cache.nbytes  # every layer's pool, each sized by its KV group
    return {
        "engine": "forwardpass",
        "model": os.path.basename(llm.path),
        "device": config.device,
        "kernels": llm.kernels.name if llm.kernels is not None else ("reference" if config.reference else "torch"),
        "threads": torch.get_num_threads(),
        "prompt_tokens": prompt_tokens,
        "gen_tokens": gen_tokens,
        "batch": batch,
        "pp_tok_s": round(prompt_tokens / statistics.median(pp_s), 1),
        "tg_tok_s": round(tg_tok_s, 1),
        "ttft_ms": round(1000 * statistics.median(pp_s), 1),
        "load_s": round(load_s, 2),
        "rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "rss_after_load_mb": round(rss_loaded, 1),
        "file_mb": round(size / 2**20, 1),
        "kv_mb": round(kv_bytes / 2**20, 1),
        "rss_budget_mb": round((size + kv_bytes) / 2**20 + 400, 1),  # the budget: file + 400 MB + KV
        "decode_gb_s": round(size * tg_tok_s / batch / 1e9, 1),
        **({"spec": spec} if spec is not None else {}),
    }


def format_table(r: dict) -> str:
    rows = [
        ("model", r["model"]),
        ("threads", r["threads"]),
        ("batch", r["batch"]),
        (f"pp{r['prompt_tokens']} tok/s", r["pp_tok_s"]),
        (f"tg{r['gen_tokens']} tok/s", r["tg_tok_s"]),
        ("ttft ms", r["ttft_ms"]),
        ("load s", r["load_s"]),
        ("peak rss MB", r["rss_mb"]),
        ("file MB", r["file_mb"]),
        ("decode GB/s (weights)", r["decode_gb_s"]),
    ]
    for name, f in r.get("spec", {}).items():
        rows.append(
            (
                f"spec {name} tok/s",
                f"{f['plain_tok_s']} -> {f['spec_tok_s']} ({f['speedup']}x, acceptance "
                f"{100 * f['acceptance_rate']:.1f}%, mean accepted length {f['mean_accepted_length']})",
            )
        )
    return "\n".join(f"{k:<24}{v}" for k, v in rows)
