#!/usr/bin/env python3
"""forwardpass beside llama.cpp, per kernel build, in one run: the figures of issue "Fast on every CPU".

For each model: llama.cpp built for the same instruction set (a venv with llama-cpp-python per build, measured by
../shared/bench/llamacpp_anchor.py) and `forwardpass bench --cpu BUILD`, back to back, and their ratios. With
--busy, a busy process (one core's worth of Python spinning) runs beside both engines.

    python scripts/bench_cpu_variants.py --llama avx512=/work/llama/native/bin/python \\
        --llama avx2=/work/llama/avx2/bin/python [--models smollm2-135m-instruct gemma3-270m] [--busy]

Build names: avx512, avx2 (plain AVX2: FORWARDPASS_AVXVNNI=0, as llama.cpp built without GGML_AVX_VNNI),
avx2+vnni (against `--llama avx2+vnni=...`, llama.cpp built with GGML_AVX_VNNI, where given; else the avx2 one).
Prints every raw JSON line, then a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from forwardpass.registry import resolve_model

ANCHOR = Path(__file__).resolve().parents[2] / "shared" / "bench" / "llamacpp_anchor.py"


def run_json(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=3600)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-2000:]}")
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")][-1]
    print(" ".join(cmd), "->", line, flush=True)
    return json.loads(line)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--llama",
        action="append",
        default=[],
        metavar="BUILD=PYTHON",
        help="the python of a venv whose llama-cpp-python is built for BUILD (avx512, avx2 or avx2+vnni)",
    )
    ap.add_argument(
        "--models", nargs="+", default=["smollm2-135m-instruct", "gemma3-270m", "qwen2.5-coder-0.5b-instruct"]
    )
    ap.add_argument("--builds", nargs="+", default=["avx512", "avx2", "avx2+vnni"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--batch",
        nargs="*",
        default=[],
        metavar="MODEL",
        help="also forwardpass --batch 16 for these models (the batch-16 / batch-1 ratio)",
    )
    ap.add_argument("--busy", action="store_true", help="a busy process beside both engines")
    args = ap.parse_args()
    llama = dict(item.split("=", 1) for item in args.llama)
    flags = [
        "--threads",
        str(args.threads),
        "--prompt-tokens",
        "512",
        "--gen-tokens",
        "128",
        "--repeat",
        str(args.repeat),
    ]
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    rows = []
    try:
        for model in args.models:
            path = resolve_model(model)
            anchors: dict[str, dict] = {}
            for build in args.builds:
                anchor_build = "avx2" if build.startswith("avx2") else build  # the kernel build --cpu names
                llama_build = build if build in llama else anchor_build  # avx2+vnni: its own llama.cpp if given
                if llama_build in llama and llama_build not in anchors:  # llama.cpp once per build and model
                    anchors[llama_build] = run_json([llama[llama_build], str(ANCHOR), path, *flags])
                env = {"FORWARDPASS_AVXVNNI": "0" if build == "avx2" else "1"}
                ours = run_json(
                    [sys.executable, "-m", "forwardpass.cli", "bench", path, "--json", "--cpu", anchor_build, *flags],
                    env,
                )
                b16 = (
                    run_json(
                        [
                            sys.executable,
                            "-m",
                            "forwardpass.cli",
                            "bench",
                            path,
                            "--json",
                            "--cpu",
                            anchor_build,
                            "--batch",
                            "16",
                            *flags,
                        ],
                        env,
                    )
                    if model in args.batch
                    else None
                )
                rows.append((model, build, ours, anchors.get(llama_build), b16))
    finally:
        if busy is not None:
            busy.kill()
    print(
        "\n| model | build | forwardpass tg / pp512 | llama.cpp tg / pp512 | ratio tg / pp | batch 16 tg (x batch 1) |"
    )
    print("|---|---|---|---|---|---|")
    for model, build, ours, ref, b16 in rows:
        theirs = f"{ref['tg_tok_s']:.1f} / {ref['pp_tok_s']:.1f}" if ref else "-"
        ratio = f"{ours['tg_tok_s'] / ref['tg_tok_s']:.2f}x / {ours['pp_tok_s'] / ref['pp_tok_s']:.2f}x" if ref else "-"
        extra = f" {b16['tg_tok_s']:.1f} ({b16['tg_tok_s'] / ours['tg_tok_s']:.2f}x) |" if b16 else " - |"
        print(
            f"| {model} | {ours['kernels']} | {ours['tg_tok_s']:.1f} / {ours['pp_tok_s']:.1f} | {theirs} | "
            f"{ratio} |{extra}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
