"""`forwardpass bench`: llama-bench style figures for one model.

pp: tokens/s to process a prompt of `prompt_tokens` tokens from an empty cache, in one batch.
tg: tokens/s decoding `gen_tokens` tokens one step at a time after a 1-token prompt (greedy argmax, no sampler),
    summed over `batch` sequences decoding together.
Each figure is the median of `repeat` runs after a warm-up run, like llama-bench.
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
from .kernels.native import argmax_fn
from .llm import LLM

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


def run_bench(
    config: EngineConfig, *, prompt_tokens: int = 512, gen_tokens: int = 128, repeat: int = 3, batch: int = 1
) -> dict:
    """The figures for `config`'s model; without a KV budget in `config`, the cache holds what the runs need."""
    t0 = time.perf_counter()
    if config.kv_tokens is None and config.kv_memory is None:
        config = config.replace(kv_tokens=max(batch * (gen_tokens + 16), prompt_tokens + 16))
    llm = LLM(config=config)
    print(llm.system_info(), file=sys.stderr, flush=True)
    load_s = time.perf_counter() - t0
    rss_loaded = psutil.Process().memory_info().rss / 2**20
    prompt = bench_prompt(llm, prompt_tokens)
    pp_s = [_time_prefill(llm, prompt) for _ in range(repeat + 1)][1:]
    tg_s = [time_decode(llm, prompt, gen_tokens, batch) for _ in range(repeat + 1)][1:]
    tg_tok_s = batch * gen_tokens / statistics.median(tg_s)
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
    return "\n".join(f"{k:<24}{v}" for k, v in rows)
