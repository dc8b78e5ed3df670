"""Checks of the CUDA path that need figures rather than pass/fail (scripts/cuda_check.sh runs them on a GPU).

    python scripts/cuda_check.py ops [--device cuda]          # is each op's row independent of the batch?
    python scripts/cuda_check.py model FILE.gguf --text FILE  # fidelity, batch invariance, perplexity vs the CPU

`ops` runs the building blocks on random data of SmolLM2's shapes, with the batch-invariance measures on
(fixed-size row blocks for every GEMM, float64 attention reductions) and off, and counts the rows whose bits
change with the batch. `model` compares the real model on the device against the exact float32 path on the CPU:
teacher-forced KL and top-1, greedy tokens of 16 prompts alone, together and chunked with a cached prefix, and
perplexity. Each result is one JSON line on stdout. Without a GPU both print a skip line and exit 0.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from forwardpass.fidelity import BATCH_SYSTEM, BATCH_TOPICS, compare_logits, decode_logits  # noqa: E402
from forwardpass.kernels import gemm  # noqa: E402
from forwardpass.models import attention as attention_module  # noqa: E402


def emit(**fields) -> None:
    print(json.dumps(fields), flush=True)


@contextlib.contextmanager
def invariance(on: bool):
    """The batch-invariance measures on (the default) or off (plain GEMMs, float32 attention)."""
    saved = gemm.ROW_BLOCK, attention_module.ACC_DTYPE
    if not on:
        gemm.ROW_BLOCK, attention_module.ACC_DTYPE = 0, torch.float32
    try:
        yield
    finally:
        gemm.ROW_BLOCK, attention_module.ACC_DTYPE = saved


# ---- ops ----
SHAPES = {"qkv": (960, 576), "o": (576, 576), "gate_up": (3072, 576), "down": (576, 1536), "head": (49152, 576)}
SLICES = [(0, 1), (0, 7), (0, 16), (5, 69), (63, 64), (64, 128), (100, 512), (511, 512)]


def _rows_differ(fn, x: torch.Tensor) -> tuple[int, float]:
    """How many of SLICES give rows that differ (bitwise) from the same rows of the whole batch; the largest gap."""
    full = fn(x).float()
    bad, gap = 0, 0.0
    for a, b in SLICES:
        part = fn(x[a:b]).float()
        if not torch.equal(part, full[a:b]):
            bad += 1
            gap = max(gap, (part - full[a:b]).abs().max().item())
    return bad, gap


def check_ops(device: str) -> None:
    gen = torch.Generator(device=device).manual_seed(0)
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, device=device, generator=gen) * 0.05
        x = torch.randn(512, k, device=device, generator=gen)
        for dtype in (torch.bfloat16, torch.float32):
            wt, xd = w.to(dtype).t(), x.to(dtype)
            for on in (False, True):
                with invariance(on):
                    bad, gap = _rows_differ(lambda v: gemm.matmul_rows(v, wt), xd)
                emit(
                    check="gemm",
                    shape=name,
                    dtype=str(dtype),
                    blocked=on,
                    slices_differing=bad,
                    of=len(SLICES),
                    max_abs_gap=gap,
                )
    x = torch.randn(512, 576, device=device, generator=gen)
    weight = torch.rand(576, device=device, generator=gen) + 0.5
    bad, gap = _rows_differ(lambda v: F.rms_norm(v, (576,), weight, 1e-5), x)
    emit(check="rms_norm", slices_differing=bad, of=len(SLICES), max_abs_gap=gap)
    for on in (False, True):
        with invariance(on):
            emit(check="decode_attention", invariance=on, **_decode_attention_gaps(device, gen))
            emit(check="prefill_attention", invariance=on, **_prefill_attention_gaps(device, gen))


def _cache(device: str, gen: torch.Generator, blocks: int = 160, bs: int = 16):
    from forwardpass.models.attention import KVCache, KVGroup

    cache = KVCache([KVGroup(0, (0,), blocks)], bs, 3, 64, torch.bfloat16, device)  # one global layer
    cache.k[0].copy_(torch.randn(cache.k[0].shape, device=device, generator=gen))
    cache.v[0].copy_(torch.randn(cache.v[0].shape, device=device, generator=gen))
    return cache


def _decode_attention_gaps(device: str, gen: torch.Generator) -> dict:
    """Sequence 0 (a 100-token context) decoding alone, then beside 15 others of other lengths."""
    from forwardpass.models.attention import AttentionMetadata, attention

    bs = 16
    cache = _cache(device, gen)
    lens = [100, 37, 250, 1, 64, 129, 300, 17, 5, 200, 90, 33, 257, 8, 150, 60]
    tables, first = [], 0
    for length in lens:
        n = -(-length // bs)
        tables.append(list(range(first, first + n)))
        first += n
    q = torch.randn(len(lens), 9, 64, device=device, generator=gen)

    def run(idx: list[int]) -> torch.Tensor:
        meta = AttentionMetadata.build(
            [1] * len(idx),
            [lens[i] for i in idx],
            [[tables[i]] for i in idx],
            [[tables[i][(lens[i] - 1) // bs] * bs + (lens[i] - 1) % bs for i in idx]],
            bs,
            torch.device(device),
            prefill=False,
        )
        return attention(q[idx], cache, 0, meta, 0.125)

    alone = run([0])
    bad, gap = 0, 0.0
    for idx in ([0, 1], [0, 2, 6], list(range(16)), [0] + list(range(8, 16))):
        out = run(idx)[:1]
        if not torch.equal(out, alone):
            bad += 1
            gap = max(gap, (out - alone).abs().max().item())
    return {"batches_differing": bad, "of": 4, "max_abs_gap": gap}


def _prefill_attention_gaps(device: str, gen: torch.Generator) -> dict:
    """The last 8 positions of a 200-token prompt: as the tail of one 200-row chunk, then of 8-, 40- and 1-row
    chunks (chunked prefill), compared row by row."""
    from forwardpass.models.attention import AttentionMetadata, attention

    bs, length = 16, 200
    cache = _cache(device, gen)
    table = list(range(-(-length // bs)))
    q = torch.randn(length, 9, 64, device=device, generator=gen)

    def run(n: int) -> torch.Tensor:
        meta = AttentionMetadata.build(
            [n],
            [length],
            [[table]],
            [[table[p // bs] * bs + p % bs for p in range(length - n, length)]],
            bs,
            torch.device(device),
            prefill=True,
        )
        return attention(q[length - n :], cache, 0, meta, 0.125)[-1:]

    whole = run(length)
    bad, gap = 0, 0.0
    for n in (1, 8, 40):
        out = run(n)
        if not torch.equal(out, whole):
            bad += 1
            gap = max(gap, (out - whole).abs().max().item())
    return {"chunkings_differing": bad, "of": 3, "max_abs_gap": gap}


# ---- model ----
def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def _agreement(name: str, got: list[list[int]], want: list[list[int]]) -> None:
    prefixes = [_common_prefix(g, w) for g, w in zip(got, want)]
    emit(
        check="greedy",
        compare=name,
        identical=sum(g == w for g, w in zip(got, want)),
        of=len(want),
        mean_common_prefix=sum(prefixes) / len(prefixes),
        first_divergence=[p for p in prefixes if p < len(want[0])],
    )


def check_model(
    path: str, text_path: str, device: str, tokens: int, gen_tokens: int, ppl_ctx: int, ctx: int = 1024
) -> None:
    from forwardpass import LLM, SamplingParams
    from forwardpass.perplexity import perplexity

    text = open(text_path, encoding="utf-8").read()
    t0 = time.perf_counter()
    cpu_ref = LLM(path, reference=True, ctx=ctx, kv_tokens=4096)
    dev_fast = LLM(path, device=device, ctx=ctx, kv_tokens=8192)
    dev_ref = LLM(path, reference=True, device=device, ctx=ctx, kv_tokens=4096)
    emit(check="load", seconds=round(time.perf_counter() - t0, 1), cpu_threads=torch.get_num_threads())
    ids = cpu_ref.tokenizer.encode(text, add_bos=True)[:tokens]
    exact = cpu_ref.logits(ids)
    emit(
        check="fidelity",
        path=f"{device} fast, prompt kernels",
        tokens=len(ids),
        **compare_logits(exact, dev_fast.logits(ids)).as_dict(),
    )
    emit(
        check="fidelity",
        path=f"{device} fast, decode kernels",
        tokens=len(ids),
        **compare_logits(exact, decode_logits(dev_fast, ids)).as_dict(),
    )
    emit(
        check="fidelity",
        path=f"{device} reference (float32)",
        tokens=len(ids),
        **compare_logits(exact, dev_ref.logits(ids)).as_dict(),
    )
    cpu_fast = LLM(path, ctx=ctx, kv_tokens=4096)
    emit(
        check="fidelity",
        path="cpu fast" + (" (native step)" if cpu_fast.model.native_decoder else " (torch)"),
        tokens=len(ids),
        **compare_logits(exact, cpu_fast.logits(ids)).as_dict(),
    )
    del cpu_fast

    params = SamplingParams(temperature=0, max_tokens=gen_tokens, ignore_eos=True)
    prompts = [dev_fast.encode_prompt(f"{BATCH_SYSTEM}Tell me something about {t}.") for t in BATCH_TOPICS]
    want = [o.token_ids for o in cpu_ref.generate(prompts, params)]
    for on in (False, True):
        with invariance(on):  # fresh engines: no KV block computed under the other setting is reused
            t0 = time.perf_counter()
            solo_llm = LLM(path, device=device, ctx=ctx, kv_tokens=4096, enable_prefix_caching=False)
            alone = [solo_llm.generate([p], params)[0].token_ids for p in prompts]
            together = [o.token_ids for o in solo_llm.generate(prompts, params)]
            chunked_llm = LLM(path, device=device, ctx=ctx, kv_tokens=4096, max_num_batched_tokens=16)
            chunked_llm.generate(
                [dev_fast.encode_prompt(BATCH_SYSTEM + "Hello.")], SamplingParams(temperature=0, max_tokens=2)
            )
            chunked = [o.token_ids for o in chunked_llm.generate(prompts, params)]
            del chunked_llm, solo_llm
            tag = "on" if on else "off"
            _agreement(f"{device} together vs alone, invariance {tag}", together, alone)
            _agreement(f"{device} chunked(16)+prefix cache vs alone, invariance {tag}", chunked, alone)
            _agreement(f"{device} fast alone vs cpu reference, invariance {tag}", alone, want)
            emit(check="timing", what=f"invariance {tag} runs", seconds=round(time.perf_counter() - t0, 1))
    from forwardpass.bench import bench_prompt, time_decode

    steps = 32  # what the invariance measures cost: decode steps timed as `forwardpass bench` times them
    for batch in (1, 16, 64):
        for on in (False, True):
            with invariance(on):
                time_decode(dev_fast, bench_prompt(dev_fast, 64), 4, batch)  # warm-up
                seconds = time_decode(dev_fast, bench_prompt(dev_fast, 64), steps, batch)
            emit(
                check="decode_speed",
                invariance=on,
                batch=batch,
                tok_s=round(batch * steps / seconds, 1),
                ms_per_step=round(1000 * seconds / steps, 2),
            )
    _agreement(
        f"{device} reference vs cpu reference (together)",
        [o.token_ids for o in dev_ref.generate(prompts, params)],
        want,
    )

    for name, llm in ((f"{device} fast", dev_fast), (f"{device} reference", dev_ref)):
        t0 = time.perf_counter()
        r = perplexity(llm, text, ppl_ctx)
        emit(
            check="perplexity",
            path=name,
            ctx=ppl_ctx,
            ppl=round(r.ppl, 4),
            stderr=round(r.stderr, 4),
            chunks=r.chunks,
            seconds=round(time.perf_counter() - t0, 1),
        )


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["ops", "model"])
    ap.add_argument("model", nargs="?")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--text", default="/usr/share/common-licenses/GPL-3")
    ap.add_argument("--tokens", type=int, default=384, help="teacher-forced tokens for the fidelity figures")
    ap.add_argument("--gen-tokens", type=int, default=32)
    ap.add_argument("--ppl-ctx", type=int, default=512)
    ap.add_argument("--ctx", type=int, default=1024)
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        emit(check=args.what, skipped="no CUDA device")
        return 0
    if args.device == "cuda":
        emit(check="device", name=torch.cuda.get_device_name(), torch=torch.__version__, cuda=torch.version.cuda)
    if args.what == "ops":
        check_ops(args.device)
    else:
        check_model(args.model, args.text, args.device, args.tokens, args.gen_tokens, args.ppl_ctx, args.ctx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
