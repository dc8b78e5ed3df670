"""Device check of the KV groups (sliding-window layers keep only their window), for a machine with a GPU.

    python scripts/check_kv_groups.py [cuda|cpu]     (from the repository root; needs the `gguf` package)

On a tiny Gemma 3 (window 20), for mixed quant types and tile types: trimmed == untrimmed under the same batching
(chunks 16 and 256), free blocks poisoned with NaN after every step never read, n=4 forks, prefix hits,
preemption, chunked scoring, and the pool all free after each. Trimmed and untrimmed runs are compared with each
other, not with a run alone, so the check holds where attention's rounding depends on the batch shape (CUDA).
Prints one line per check; exit status 1 if any failed.
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

import torch

sys.path[:0] = ["tests", "."]
from tiny_models import write_tiny_model  # noqa: E402

import forwardpass.llm as llm_module  # noqa: E402
from forwardpass import LLM, SamplingParams  # noqa: E402
from forwardpass.engine.kv_groups import blocks_for  # noqa: E402
from forwardpass.models.attention import KVGroup  # noqa: E402

WINDOW = 20
PROMPTS = [[4 + (i * 7 + j * 3) % 300 for j in range(30 + 23 * i)] for i in range(6)]  # 30 .. 145 tokens
SHARED = [4 + (j * 11) % 300 for j in range(70)]


def greedy(n: int = 40) -> SamplingParams:
    return SamplingParams(temperature=0, max_tokens=n, ignore_eos=True)


def make(path: str, device: str, trim: bool = True, **kw) -> LLM:
    """The tiny model on `device`; `trim=False` keeps whole contexts in every layer (one KV group)."""
    plan = llm_module.plan_kv_groups
    if not trim:
        llm_module.plan_kv_groups = lambda windows, budget, bs, ctx, *args: [
            KVGroup(0, tuple(range(len(windows))), blocks_for(max(ctx, budget), bs))
        ]
    try:
        return LLM(path, device=device, ctx=256, **kw)
    finally:
        llm_module.plan_kv_groups = plan


def tokens(llm: LLM, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
    return [o.token_ids for o in llm.generate(prompts, params)]


def poisoned_run(llm: LLM, prompts: list[list[int]], params: SamplingParams) -> list[list[int]]:
    """Generate with every free block of every group set to NaN before each step."""
    cache, bm = llm.runner.cache, llm.engine.block_manager

    def poison() -> None:
        for group, pool in zip(cache.groups, bm.pools):
            free = torch.tensor(list(pool.free), dtype=torch.int64, device=cache.k[0].device)
            for layer in group.layers:
                for t in (cache.k[layer], cache.v[layer]):
                    t.view(pool.num_blocks, cache.block_size, -1)[free] = float("nan")

    requests = [llm.engine.add_request(p, params) for p in prompts]
    poison()
    while llm.engine.has_unfinished():
        llm.engine.step()
        poison()
    return [r.completions[0].output.token_ids for r in requests]


def checks(path: str, device: str) -> dict[str, bool]:
    results = {}
    for chunk in (16, 256):
        kw = {"max_num_seqs": 6, "max_num_batched_tokens": chunk}
        trimmed, poisoned = make(path, device, **kw), make(path, device, enable_prefix_caching=False, **kw)
        expected = tokens(make(path, device, False, enable_prefix_caching=False, **kw), PROMPTS, greedy())
        results[f"chunk {chunk}: two groups"] = [g.window for g in trimmed.runner.cache.groups] == [0, WINDOW]
        results[f"chunk {chunk}: trimmed == untrimmed"] = tokens(trimmed, PROMPTS, greedy()) == expected
        results[f"chunk {chunk}: NaN free blocks never read"] = poisoned_run(poisoned, PROMPTS, greedy()) == expected
        results[f"chunk {chunk}: all free"] = trimmed.engine.block_manager.num_used == 0
    params = SamplingParams(n=4, temperature=1.0, seed=3, max_tokens=60, ignore_eos=True)
    forks = [
        [o.token_ids for o in make(path, device, trim).generate([SHARED], params)[0].outputs] for trim in (True, False)
    ]
    results["n=4 forks: trimmed == untrimmed"] = forks[0] == forks[1]
    hits = []
    for trim in (True, False):
        llm = make(path, device, trim)
        tokens(llm, [SHARED + [7]], greedy(2))  # leaves SHARED's four full blocks in the cache
        outs = llm.generate([SHARED + p[:10] for p in PROMPTS[:4]], greedy(30))
        hits.append(([o.token_ids for o in outs], [o.num_cached_tokens for o in outs]))
    results["prefix hits: 64 tokens each, trimmed == untrimmed"] = hits[0] == hits[1] and hits[0][1] == [64] * 4
    tight = make(path, device, kv_tokens=256, max_num_batched_tokens=32)
    loose = make(path, device, False, kv_tokens=256, max_num_batched_tokens=32)
    same = tokens(tight, PROMPTS, greedy()) == tokens(loose, PROMPTS, greedy())
    results["preemption: trimmed == untrimmed, all free"] = (
        same and tight.engine.scheduler.num_preemptions > 0 and tight.engine.block_manager.num_used == 0
    )
    ids = [4 + (5 * i) % 300 for i in range(200)]
    chunked = make(path, device, kv_tokens=64, max_num_seqs=1, max_num_batched_tokens=16).logits(ids, first=20)
    whole = make(path, device, False).logits(ids, first=20)
    results["chunked scoring close"] = (chunked - whole).abs().max().item() <= 2e-2 * whole.abs().max().item()
    return results


def main() -> int:
    device = sys.argv[1] if len(sys.argv) > 1 else "cuda"
    print("torch", torch.__version__, torch.cuda.get_device_name(0) if device == "cuda" else device, flush=True)
    ok = True
    for types in ("mixed", "tiles"):
        path = pathlib.Path(tempfile.mkdtemp()) / f"gemma3-{types}.gguf"
        write_tiny_model(path, "gemma3", seed=9, tile_types=types == "tiles", sliding_window=WINDOW)
        for name, passed in checks(str(path), device).items():
            print(f"{'PASS' if passed else 'FAIL'} {types} {name}", flush=True)
            ok &= passed
    print("ALL OK" if ok else "SOME FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
