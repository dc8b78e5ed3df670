"""Time every `Linear` backend on the real models' weight shapes and types, at decode and prefill sizes.

    python scripts/bench_linear.py                      # both models, T = 1, 128, 512, 2 threads
    python scripts/bench_linear.py --tokens 1 16 32 64 --models smollm2 --repeat 31

Decode (T = 1) reads each weight once, so it is reported in GB/s of the backend's own weight bytes; to measure
memory, not cache, each backend rotates through enough copies of the weight to exceed the L3 cache
(--working-set MB). Prefill is reported in GFLOP/s (2 T N K per call). Every figure is the median of --repeat
calls after a warm-up; run with nothing else busy on the machine (two threads on two cores halve or worse when
another process competes), and compare backends within one run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable

import torch
from gguf import GGMLQuantizationType as T

from forwardpass.gguf.reader import GGUFFile
from forwardpass.gguf.weights import QuantWeight, WeightStore
from forwardpass.kernels import KernelChoice, make_linear
from forwardpass.kernels.int4 import Int4PackLinear
from forwardpass.kernels.int8 import Int8Linear, Int8PackLinear
from forwardpass.kernels.linear import DenseLinear, Linear
from forwardpass.kernels.native import describe, runnable_variants
from forwardpass.kernels.repack import INT4_GROUPERS, to_int4_groups, to_int8_rows
from forwardpass.kernels.select import select_kernels
from forwardpass.kernels.tiles import TileLinear, TileMatrix, tile_supports
from forwardpass.registry import resolve_model

# short name -> (registry name, tensors to time, a layer whose q/k/v share one type, for the fusion figures)
MODELS = {
    "smollm2": (
        "smollm2-135m-instruct",
        [
            "blk.0.attn_q.weight",
            "blk.0.attn_k.weight",
            "blk.0.ffn_up.weight",
            "blk.0.ffn_down.weight",
            "token_embd.weight",
        ],
        "blk.0.",
    ),
    "gemma3": (
        "gemma3-270m",
        [
            "blk.0.attn_q.weight",
            "blk.0.attn_k.weight",
            "blk.0.attn_v.weight",
            "blk.0.ffn_gate.weight",
            "blk.0.attn_output.weight",
            "blk.0.ffn_down.weight",
            "blk.2.ffn_down.weight",
            "token_embd.weight",
        ],
        "blk.2.",
    ),
}
NEVER = 1 << 30  # a dense_min_tokens that keeps a backend on its decode kernel


def storage_bytes(linear: Linear) -> int:
    """Bytes of the tensors a backend keeps for its weight (what decode must read)."""
    total = 0
    for value in vars(linear).values():
        if isinstance(value, QuantWeight):
            value = value.raw
        if isinstance(value, TileMatrix):  # the tiles' codes, planes and scales
            total += sum(a.numel() * a.element_size() for a in value.arrays.values())
        if isinstance(value, torch.Tensor) and value.numel() > 1024:
            total += value.numel() * value.element_size()
    return total


def with_threshold(linear: Linear, tokens: int) -> Linear:
    linear.dense_min_tokens = tokens  # instance override of the class's measured crossover
    return linear


def backends(w: QuantWeight) -> dict[str, Callable[[QuantWeight], Linear]]:
    """name -> factory building that backend from a (copied) weight."""
    out: dict[str, Callable[[QuantWeight], Linear]] = {
        "fast": lambda w: make_linear(w, mode="fast", kernels=KernelChoice(select_kernels()))
    }
    for variant in runnable_variants():  # the tile kernels of every build this CPU runs
        lib = select_kernels(variant)
        if tile_supports(w, lib):
            out[f"tiles ({lib.name})"] = lambda w, lib=lib: TileLinear([w], lib)
    if w.ggml_type in INT4_GROUPERS:
        out["int4pack kernel"] = lambda w: with_threshold(Int4PackLinear(to_int4_groups(w)), NEVER)
        out["int4->bf16 gemm"] = lambda w: with_threshold(Int4PackLinear(to_int4_groups(w)), 0)
    else:
        out["int8pack kernel"] = lambda w: with_threshold(Int8PackLinear(to_int8_rows(w)), NEVER)
        out["int8->bf16 gemm"] = lambda w: Int8Linear(to_int8_rows(w))
    out["bf16 dense (not quantized)"] = lambda w: DenseLinear(w.dequantize(torch.bfloat16))
    return out


def copies(weight: QuantWeight, factory: Callable[[QuantWeight], Linear], working_set: int) -> list[Linear]:
    """Enough independent copies of the backend that cycling through them misses the cache."""
    first = factory(weight)
    n = max(1, min(16, -(-working_set // max(1, storage_bytes(first)))))
    clone = lambda: QuantWeight(weight.name, weight.ggml_type, weight.shape, weight.raw.clone())
    return [first] + [factory(clone()) for _ in range(n - 1)]


def median_time(linears: list[Linear], x: torch.Tensor, repeat: int) -> float:
    for lin in linears[:3]:
        lin(x)
    times = []
    for i in range(repeat):
        lin = linears[i % len(linears)]
        t0 = time.perf_counter()
        lin(x)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_weight(weight: QuantWeight, tokens: list[int], repeat: int, working_set: int) -> None:
    n, k = weight.shape
    print(f"\n{weight.name} {T(weight.ggml_type).name} {k}->{n}")
    for name, factory in backends(weight).items():
        if name.startswith("bf16 dense") and n * k > 50_000_000:
            continue  # Gemma 3's head in bf16 is 335 MB: beyond the memory budget, not worth timing
        linears = copies(weight, factory, working_set if name != "bf16 dense (not quantized)" else 0)
        size = storage_bytes(linears[0])
        cells = []
        for t in tokens:
            x = torch.randn(t, k)
            s = median_time(linears, x, repeat if t < 64 else max(3, repeat // 4))
            rate = f"{size / s / 1e9:5.1f} GB/s" if t == 1 else f"{2 * t * n * k / s / 1e9:5.0f} GF/s"
            cells.append(f"T={t}: {s * 1e3:8.3f} ms {rate}")
        print(f"  {name:28s} {size / 1e6:7.2f} MB | " + " | ".join(cells))


def bench_fusion(store: WeightStore, prefix: str, groups: list[list[str]], repeat: int) -> None:
    """Separate projections vs one projection over their concatenated rows (same input), at T = 1."""
    x = torch.randn(1, store.gguf.tensors[prefix + groups[0][0]].shape[1])
    for names in groups:
        ws = [store.get(prefix + nm, tuple(store.gguf.tensors[prefix + nm].shape)) for nm in names]
        if len({w.ggml_type for w in ws}) > 1:
            continue
        fused = QuantWeight(
            "+".join(names),
            ws[0].ggml_type,
            (sum(w.shape[0] for w in ws), ws[0].shape[1]),
            torch.cat([w.raw for w in ws]),
        )
        parts = [make_linear(w, mode="fast") for w in ws]
        whole = make_linear(fused, mode="fast")
        t_parts = median_time([lambda x: [p(x) for p in parts]], x, repeat)
        t_whole = median_time([whole], x, repeat)
        kinds = ", ".join(sorted({type(p).__name__ for p in parts}))
        print(
            f"  {prefix}{{{','.join(n.split('.')[0] for n in names)}}} ({kinds}): separate {t_parts * 1e6:6.1f} us,"
            f" fused {t_whole * 1e6:6.1f} us"
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--tokens", nargs="+", type=int, default=[1, 128, 512])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=21)
    ap.add_argument("--working-set", type=int, default=64, help="MB cycled through per backend (> L3)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, kernels {describe(select_kernels())}")
    with torch.inference_mode():
        for model in args.models:
            short, names, fusion_layer = MODELS[model]
            store = WeightStore(GGUFFile(resolve_model(short)))
            for name in names:
                info = store.gguf.tensors[name]
                bench_weight(store.get(name, tuple(info.shape)), args.tokens, args.repeat, args.working_set << 20)
            print(f"\n{model}: projection fusion at T=1")
            bench_fusion(
                store,
                fusion_layer,
                [["attn_q.weight", "attn_k.weight", "attn_v.weight"], ["ffn_gate.weight", "ffn_up.weight"]],
                args.repeat,
            )


if __name__ == "__main__":
    main()
