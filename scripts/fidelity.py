"""Fidelity of the fast path: KL(exact || fast) and top-1 agreement against the exact float32 reference, next to
llama.cpp's on the same token ids (its logits from scripts/llamacpp_reference.py, run in its own environment).

    python scripts/fidelity.py MODEL [--llamacpp-python /path/to/venv/bin/python] [--tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

from forwardpass import LLM
from forwardpass.fidelity import compare_logits, decode_logits

TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type, oil-based inks and a wooden press adapted from those used to make wine. Within fifty "
    "years, presses had spread to more than two hundred cities across Europe, and the cost of books fell so "
    "far that reading, once the privilege of clergy and nobles, became part of everyday life for merchants "
    "and craftsmen. Historians still argue about how much the press changed religion, science and politics, "
    "but few doubt that it changed them. Printers became publishers, editors and booksellers at once; they "
    "standardized spelling, invented title pages and page numbers, and argued with censors in a dozen "
    "languages."
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--llamacpp-python", default=None)
    args = ap.parse_args()
    exact_llm = LLM(args.model, reference=True)
    ids = exact_llm.tokenizer.encode(TEXT, add_bos=True)[: args.tokens]
    exact = exact_llm.logits(ids)
    path = exact_llm.path
    del exact_llm
    fast_llm = LLM(path)
    fast = fast_llm.logits(ids)
    result = {
        "model": os.path.basename(path),
        "tokens": len(ids),
        "forwardpass": compare_logits(exact, fast).as_dict(),
        "forwardpass_decode": compare_logits(exact, decode_logits(fast_llm, ids)).as_dict(),
    }
    if args.llamacpp_python:
        with tempfile.TemporaryDirectory() as tmp:
            ids_file, out = os.path.join(tmp, "ids.json"), os.path.join(tmp, "logits.npy")
            json.dump(ids, open(ids_file, "w"))
            script = os.path.join(os.path.dirname(__file__), "llamacpp_reference.py")
            subprocess.run([args.llamacpp_python, script, path, "logits", "--ids", ids_file, "--out", out], check=True)
            result["llama.cpp"] = compare_logits(exact, torch.from_numpy(np.load(out))).as_dict()
    print(json.dumps(result))


if __name__ == "__main__":
    sys.exit(main())
