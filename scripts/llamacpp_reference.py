"""llama.cpp's side of the fidelity and perplexity comparisons, through llama-cpp-python.

Run with an interpreter that has llama-cpp-python (keep it in its own virtual environment):
    python scripts/llamacpp_reference.py MODEL.gguf perplexity --file TEXT [--ctx 512]
    python scripts/llamacpp_reference.py MODEL.gguf logits --ids IDS.json --out LOGITS.npy

`perplexity` follows llama-perplexity exactly (the text tokenized with BOS where the model uses one, chunks of
ctx tokens with BOS in place of the first token, the second half of each chunk scored) and prints the same
"Final estimate: PPL = X +/- Y" line. `logits` writes llama.cpp's teacher-forced logits for the given token ids.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np


def load(path: str, n_ctx: int, threads: int):
    from llama_cpp import Llama

    return Llama(
        model_path=path,
        n_ctx=n_ctx,
        n_batch=n_ctx,
        n_ubatch=n_ctx,
        logits_all=True,
        n_threads=threads,
        n_threads_batch=threads,
        verbose=False,
    )


def chunk_logits(llm, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)], dtype=np.float64)


def perplexity(args: argparse.Namespace) -> None:
    llm = load(args.model, args.ctx, args.threads)
    text = open(args.file, encoding="utf-8").read()
    add_bos = llm._model.add_bos_token() if hasattr(llm._model, "add_bos_token") else True
    tokens = llm.tokenize(text.encode(), add_bos=True)
    ctx, first = args.ctx, args.ctx // 2
    nll = nll2 = 0.0
    count = 0
    for i in range(len(tokens) // ctx):
        chunk = tokens[i * ctx : (i + 1) * ctx]
        if add_bos:
            chunk = [llm.token_bos()] + chunk[1:]
        logits = chunk_logits(llm, chunk)[first : ctx - 1]
        logits -= logits.max(axis=1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
        token_nll = -logp[np.arange(len(logp)), chunk[first + 1 :]]
        nll += token_nll.sum()
        nll2 += (token_nll**2).sum()
        count += len(token_nll)
        print(f"[{i + 1}]{math.exp(nll / count):.4f},", end="", flush=True)
    mean = nll / count
    var = nll2 / count - mean * mean
    ppl = math.exp(mean)
    print(f"\nFinal estimate: PPL = {ppl:.4f} +/- {math.sqrt(var / (count - 1)) * ppl:.5f}")


def logits(args: argparse.Namespace) -> None:
    ids = json.load(open(args.ids))
    llm = load(args.model, len(ids) + 8, args.threads)
    np.save(args.out, chunk_logits(llm, ids).astype(np.float32))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=2)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("perplexity")
    p.add_argument("--file", required=True)
    p.add_argument("--ctx", type=int, default=512)
    p.set_defaults(func=perplexity)
    p = sub.add_parser("logits")
    p.add_argument("--ids", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=logits)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
